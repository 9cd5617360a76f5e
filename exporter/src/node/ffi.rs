//! The only module of virtguard with `unsafe` code: the libvirt calls the `virt` crate does not
//! wrap safely.
//!
//! * `virConnectGetAllDomainStats`: `virt` 0.5 returns raw record pointers and never frees the
//!   records (nor the domain references inside them), so a long-running exporter would leak on
//!   every scrape. [`all_domain_stats`] copies every record into owned Rust data, takes one
//!   counted reference on each domain (released by `virt::domain::Domain`'s `Drop`), and frees
//!   the list with `virDomainStatsRecordListFree`.
//! * `virDomainGetJobStats`: `virt` 0.5 hands libvirt's `malloc`ed array to `Vec::from_raw_parts`
//!   (wrong allocator) and panics on an unexpected parameter type. [`job_stats`] copies and frees
//!   with `virTypedParamsFree` instead.
//! * Typed parameters ([`read_params`]): a `virTypedParameter` is a tagged union; the tag
//!   (`type_`) says which member is valid. Unknown tags are skipped, never guessed.
//!
//! Invariants the callers rely on: nothing returned borrows libvirt memory; every libvirt
//! allocation made here is freed here, on every path.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_int, c_uint};
use std::ptr;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::Error as VirtError;
use virt_sys as sys;

/// Value of one typed parameter, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `VIR_TYPED_PARAM_INT` and `VIR_TYPED_PARAM_LLONG`.
    Int(i64),
    /// `VIR_TYPED_PARAM_UINT` and `VIR_TYPED_PARAM_ULLONG`.
    UInt(u64),
    /// `VIR_TYPED_PARAM_DOUBLE`.
    Double(f64),
    /// `VIR_TYPED_PARAM_BOOLEAN`.
    Bool(bool),
    /// `VIR_TYPED_PARAM_STRING` (lossily converted to UTF-8).
    Str(String),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::UInt(v) => Some(*v),
            Value::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// The value as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Owned list of `(field name, value)` pairs, in libvirt's order.
pub type Params = Vec<(String, Value)>;

/// One record of `virConnectGetAllDomainStats`, copied out of libvirt memory.
pub struct Record {
    /// The domain (one counted reference; freed on drop). Used for follow-up calls (XML, job).
    pub domain: Domain,
    /// Domain name, read locally from the handle (no RPC).
    pub name: String,
    /// Domain id (changes whenever the domain is restarted; -1 as `u32::MAX` when inactive).
    pub id: u32,
    /// The stats parameters.
    pub params: Params,
}

/// Copies `n` typed parameters starting at `params`.
///
/// # Safety
/// `params` must point to `n` initialised `virTypedParameter`s (or be null with `n <= 0`), and
/// every `VIR_TYPED_PARAM_STRING` member must be null or a NUL-terminated string, as libvirt
/// guarantees for the arrays it returns. Nothing is freed or retained.
pub unsafe fn read_params(params: *const sys::virTypedParameter, n: c_int) -> Params {
    let Ok(n) = usize::try_from(n) else {
        return Vec::new();
    };
    if params.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `n` initialised elements at `params`.
    let slice = unsafe { std::slice::from_raw_parts(params, n) };
    let mut out = Vec::with_capacity(n);
    for p in slice {
        let field = field_name(&p.field);
        let ty = u32::try_from(p.type_).unwrap_or(0);
        // SAFETY (every union read below): `type_` is the tag of the union and names the
        // member libvirt initialised; each arm reads only that member.
        let value = match ty {
            sys::VIR_TYPED_PARAM_INT => Value::Int(i64::from(unsafe { p.value.i })),
            sys::VIR_TYPED_PARAM_UINT => Value::UInt(u64::from(unsafe { p.value.ui })),
            sys::VIR_TYPED_PARAM_LLONG => Value::Int(unsafe { p.value.l }),
            sys::VIR_TYPED_PARAM_ULLONG => Value::UInt(unsafe { p.value.ul }),
            sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(unsafe { p.value.d }),
            sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(unsafe { p.value.b } != 0),
            sys::VIR_TYPED_PARAM_STRING => {
                let s = unsafe { p.value.s };
                if s.is_null() {
                    continue;
                }
                // SAFETY: non-null string members are NUL-terminated (caller's contract).
                Value::Str(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
            }
            _ => continue,
        };
        out.push((field, value));
    }
    out
}

/// The field name of a typed parameter: bytes up to the first NUL, or the whole array if libvirt
/// ever filled it completely (no unsafe needed: the array is inline in the struct).
fn field_name(field: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Calls `virConnectGetAllDomainStats(conn, stats, flags)` and copies the result.
pub fn all_domain_stats(conn: &Connect, stats: u32, flags: u32) -> Result<Vec<Record>, VirtError> {
    let mut list: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
    // SAFETY: `conn` is an open connection owned by `Connect` for the duration of the call;
    // `list` is a valid out-pointer.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(conn.as_ptr(), stats as c_uint, &mut list, flags as c_uint)
    };
    if n < 0 {
        return Err(VirtError::last_error());
    }
    let count = usize::try_from(n).unwrap_or(0);
    let mut out = Vec::with_capacity(count);
    if !list.is_null() {
        for i in 0..count {
            // SAFETY: libvirt returned `n` non-null record pointers followed by a NULL.
            let rec = unsafe { *list.add(i) };
            if rec.is_null() {
                break;
            }
            // SAFETY: `rec` is a valid record until the list is freed below.
            let (dom, params, nparams) = unsafe { ((*rec).dom, (*rec).params, (*rec).nparams) };
            if dom.is_null() {
                continue;
            }
            // SAFETY: `params`/`nparams` come from the same record (libvirt's contract).
            let params = unsafe { read_params(params, nparams) };
            // SAFETY: `dom` is a valid domain; the name belongs to it and is copied at once.
            let name = unsafe {
                let p = sys::virDomainGetName(dom);
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            // SAFETY: local accessor on a valid domain.
            let id = unsafe { sys::virDomainGetID(dom) };
            // SAFETY: take our own reference before the list (and its references) is freed;
            // `Domain::from_ptr` adopts it and calls `virDomainFree` exactly once on drop.
            if unsafe { sys::virDomainRef(dom) } < 0 {
                continue;
            }
            let domain = unsafe { Domain::from_ptr(dom) };
            out.push(Record {
                domain,
                name,
                id,
                params,
            });
        }
        // SAFETY: `list` came from virConnectGetAllDomainStats and is freed once; our copies
        // own no libvirt memory, and the domains we keep hold their own references.
        unsafe { sys::virDomainStatsRecordListFree(list) };
    }
    Ok(out)
}

/// Job type and parameters of the domain's current job (`virDomainGetJobStats`, flags 0).
/// A type of `VIR_DOMAIN_JOB_NONE` (0) means no job is running.
pub fn job_stats(domain: &Domain) -> Result<(i32, Params), VirtError> {
    let mut ty: c_int = 0;
    let mut params: sys::virTypedParameterPtr = ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: `domain` is a valid handle for the call; out-pointers are valid locals.
    let rc = unsafe { sys::virDomainGetJobStats(domain.as_ptr(), &mut ty, &mut params, &mut n, 0) };
    if rc < 0 {
        return Err(VirtError::last_error());
    }
    // SAFETY: libvirt returned `n` parameters at `params`.
    let out = unsafe { read_params(params, n) };
    if !params.is_null() {
        // SAFETY: the array (and its strings) were allocated by libvirt for us; freed once.
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok((ty, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn param(
        name: &str,
        ty: u32,
        value: sys::_virTypedParameter__bindgen_ty_1,
    ) -> sys::virTypedParameter {
        let mut field = [0 as std::os::raw::c_char; 80];
        for (i, b) in name.bytes().enumerate().take(80) {
            field[i] = b as std::os::raw::c_char;
        }
        sys::virTypedParameter {
            field,
            type_: ty as c_int,
            value,
        }
    }

    #[test]
    fn reads_every_typed_parameter_kind() {
        let s = CString::new("vda").unwrap();
        let params = [
            param(
                "a.int",
                sys::VIR_TYPED_PARAM_INT,
                sys::_virTypedParameter__bindgen_ty_1 { i: -5 },
            ),
            param(
                "a.uint",
                sys::VIR_TYPED_PARAM_UINT,
                sys::_virTypedParameter__bindgen_ty_1 { ui: 7 },
            ),
            param(
                "a.llong",
                sys::VIR_TYPED_PARAM_LLONG,
                sys::_virTypedParameter__bindgen_ty_1 { l: -1 << 40 },
            ),
            param(
                "a.ullong",
                sys::VIR_TYPED_PARAM_ULLONG,
                sys::_virTypedParameter__bindgen_ty_1 { ul: u64::MAX },
            ),
            param(
                "a.double",
                sys::VIR_TYPED_PARAM_DOUBLE,
                sys::_virTypedParameter__bindgen_ty_1 { d: 1.5 },
            ),
            param(
                "a.bool",
                sys::VIR_TYPED_PARAM_BOOLEAN,
                sys::_virTypedParameter__bindgen_ty_1 { b: 1 },
            ),
            param(
                "a.str",
                sys::VIR_TYPED_PARAM_STRING,
                sys::_virTypedParameter__bindgen_ty_1 {
                    s: s.as_ptr() as *mut _,
                },
            ),
            param(
                "a.nullstr",
                sys::VIR_TYPED_PARAM_STRING,
                sys::_virTypedParameter__bindgen_ty_1 { s: ptr::null_mut() },
            ),
            param(
                "a.unknown",
                99,
                sys::_virTypedParameter__bindgen_ty_1 { ul: 3 },
            ),
        ];
        let got = unsafe { read_params(params.as_ptr(), params.len() as c_int) };
        assert_eq!(
            got,
            vec![
                ("a.int".to_string(), Value::Int(-5)),
                ("a.uint".to_string(), Value::UInt(7)),
                ("a.llong".to_string(), Value::Int(-1 << 40)),
                ("a.ullong".to_string(), Value::UInt(u64::MAX)),
                ("a.double".to_string(), Value::Double(1.5)),
                ("a.bool".to_string(), Value::Bool(true)),
                ("a.str".to_string(), Value::Str("vda".to_string())),
            ]
        );
    }

    #[test]
    fn null_or_empty_arrays_give_nothing() {
        assert!(unsafe { read_params(ptr::null(), 3) }.is_empty());
        let p = [param(
            "x",
            sys::VIR_TYPED_PARAM_INT,
            sys::_virTypedParameter__bindgen_ty_1 { i: 1 },
        )];
        assert!(unsafe { read_params(p.as_ptr(), 0) }.is_empty());
        assert!(unsafe { read_params(p.as_ptr(), -1) }.is_empty());
    }

    #[test]
    fn field_without_nul_is_read_to_the_end_of_the_array() {
        let long = "x".repeat(80);
        let p = [param(
            &long,
            sys::VIR_TYPED_PARAM_UINT,
            sys::_virTypedParameter__bindgen_ty_1 { ui: 1 },
        )];
        let got = unsafe { read_params(p.as_ptr(), 1) };
        assert_eq!(got[0].0, long);
    }

    #[test]
    fn value_accessors() {
        assert_eq!(Value::Int(-1).as_u64(), None);
        assert_eq!(Value::Int(4).as_u64(), Some(4));
        assert_eq!(Value::UInt(4).as_u64(), Some(4));
        assert_eq!(Value::Str("a".into()).as_str(), Some("a"));
        assert_eq!(Value::Double(1.0).as_u64(), None);
    }

    /// A real libvirt round trip through the test driver (in-process, no daemon): the record list
    /// and the domain references are freed without crashing, and the names are copied.
    #[test]
    fn all_domain_stats_against_the_test_driver() {
        virt::error::clear_error_callback();
        let conn = Connect::open(Some("test:///default")).unwrap();
        let recs = all_domain_stats(&conn, sys::VIR_DOMAIN_STATS_STATE, 0).unwrap();
        assert!(
            recs.iter().any(|r| r.name == "test"),
            "test driver's default domain"
        );
        let r = recs.iter().find(|r| r.name == "test").unwrap();
        assert!(r.params.iter().any(|(k, _)| k == "state.state"));
        // The test driver does not implement job stats: the error is libvirt's, not a crash.
        // (The real-daemon tests in exporter/tests/ cover job stats of a running job.)
        let err = job_stats(&r.domain).unwrap_err();
        assert!(err.message().contains("virDomainGetJobStats"), "{err}");
        drop(recs);
        drop(conn);
    }
}
