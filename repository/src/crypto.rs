//! Chunk ids, blob encoding (compression + optional encryption) and key wrapping.
//!
//! * Unencrypted repository: chunk id = BLAKE3(chunk); blobs are header + zstd or raw payload.
//! * Encrypted repository: a random 64-byte master secret is created at `init`: bytes 0..32 are
//!   the ChaCha20-Poly1305 data key, bytes 32..64 the BLAKE3 key for keyed chunk ids. It is stored
//!   in config.json wrapped (ChaCha20-Poly1305) by a key derived with Argon2id from the user's key
//!   (a file, or `VIRTGUARD_KEY`; any bytes, typically a passphrase). Every blob payload is sealed
//!   with a fresh random 96-bit nonce (safe far beyond 2^32 objects per repository at 4 MiB chunks,
//!   i.e. beyond 16 PiB), with the blob header and object key as associated data.
//!
//! Blob payloads are sealed with the repository's [`DataCipher`] (`encryption.aead` in
//! config.json): ChaCha20-Poly1305, or AES-256-GCM (ring's AES-NI/VAES + carry-less multiply
//! code, about 3× faster than ChaCha20-Poly1305 here) in repositories created with config
//! format 2. Both are always readable; the master key is always wrapped with ChaCha20-Poly1305.
//!
//! A wrong key fails the AEAD check of the wrapped key and is reported as [`Error::WrongKey`];
//! nothing is ever decoded with a wrong key. Key material is never printed (`Debug` is redacted).

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{BlobHeader, ChunkId, BLOB_HEADER_LEN, FLAG_ENCRYPTED, FLAG_ZSTD};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAP_AAD: &[u8] = b"virtguard master key v1";
/// Largest raw length accepted when decoding any blob (guards allocation on corrupt headers).
pub const MAX_RAW_LEN: u64 = 4 << 30;

/// Argon2id parameters stored in config.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

/// The `encryption` section of config.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    pub aead: String,
    pub kdf: KdfParams,
    /// hex(nonce ‖ ciphertext ‖ tag) of the 64-byte master secret.
    pub wrapped_key: String,
}

/// The unwrapped keys of an encrypted repository.
#[derive(Clone)]
struct Keys {
    data: Key,
    id: [u8; 32],
    cipher: DataCipher,
}

/// The AEAD sealing blob payloads: `encryption.aead` in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataCipher {
    /// ChaCha20-Poly1305 (RFC 8439): every repository of config format 1, and the default on
    /// CPUs without AES instructions.
    ChaCha20Poly1305,
    /// AES-256-GCM: the default where the CPU has AES and carry-less multiply instructions;
    /// such repositories have config format 2 (older binaries refuse them by that version).
    Aes256Gcm,
}

impl DataCipher {
    /// The name in config.json.
    pub const fn name(self) -> &'static str {
        match self {
            DataCipher::ChaCha20Poly1305 => "chacha20poly1305",
            DataCipher::Aes256Gcm => "aes256gcm",
        }
    }

    /// The cipher named `name` (config.json or the command line).
    pub fn parse(name: &str) -> Result<DataCipher> {
        match name {
            "chacha20poly1305" => Ok(DataCipher::ChaCha20Poly1305),
            "aes256gcm" => Ok(DataCipher::Aes256Gcm),
            other => Err(Error::Crypto(format!(
                "unsupported AEAD `{other}` (known: aes256gcm, chacha20poly1305)"
            ))),
        }
    }

    /// AES-256-GCM when this CPU has AES and carry-less multiply instructions (where it is
    /// several times faster), ChaCha20-Poly1305 otherwise (where AES in software is slow).
    pub fn preferred() -> DataCipher {
        if hardware_aes() {
            DataCipher::Aes256Gcm
        } else {
            DataCipher::ChaCha20Poly1305
        }
    }

    /// The config.json format version a repository with this cipher is written with: 1 for
    /// ChaCha20-Poly1305 (readable by every virtguard), 2 for AES-256-GCM.
    pub const fn config_format_version(self) -> u32 {
        match self {
            DataCipher::ChaCha20Poly1305 => 1,
            DataCipher::Aes256Gcm => 2,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn hardware_aes() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn hardware_aes() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn hardware_aes() -> bool {
    false
}

/// ring's key for the data key under `cipher` (the key schedule is cheap next to a chunk).
/// Blobs use ring for both ciphers: its ChaCha20-Poly1305 (the same RFC 8439 construction as
/// the RustCrypto one that wraps the master key) is about twice as fast here.
fn ring_key(cipher: DataCipher, data: &Key) -> Result<ring::aead::LessSafeKey> {
    let alg = match cipher {
        DataCipher::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        DataCipher::Aes256Gcm => &ring::aead::AES_256_GCM,
    };
    ring::aead::UnboundKey::new(alg, data.as_slice())
        .map(ring::aead::LessSafeKey::new)
        .map_err(|_| Error::Crypto(format!("{} key setup failed", cipher.name())))
}

/// Hashing and blob encoding for one repository.
#[derive(Clone)]
pub struct Crypto {
    keys: Option<Keys>,
    zstd_level: i32,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("encrypted", &self.keys.is_some())
            .field("zstd_level", &self.zstd_level)
            .finish_non_exhaustive()
    }
}

fn derive_wrapping_key(user_key: &[u8], kdf: &KdfParams) -> Result<Key> {
    if kdf.algorithm != "argon2id" {
        return Err(Error::Crypto(format!(
            "unsupported KDF `{}`",
            kdf.algorithm
        )));
    }
    let salt = hex::decode(&kdf.salt)
        .map_err(|_| Error::Crypto("config.json: KDF salt is not hex".into()))?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| Error::Crypto(format!("invalid Argon2 parameters in config.json: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(user_key, &salt, &mut out)
        .map_err(|e| Error::Crypto(format!("key derivation failed: {e}")))?;
    Ok(Key::from(out))
}

/// Wraps the 64-byte master secret with a key derived (Argon2id, fresh salt) from `user_key`.
fn wrap_master(
    master: &[u8; 64],
    user_key: &[u8],
    memory_kib: u32,
    iterations: u32,
) -> Result<EncryptionConfig> {
    if user_key.is_empty() {
        return Err(Error::Invalid("the encryption key is empty".into()));
    }
    let salt: [u8; 16] = rand::random();
    let kdf = KdfParams {
        algorithm: "argon2id".into(),
        memory_kib,
        iterations,
        parallelism: 1,
        salt: hex::encode(salt),
    };
    let wrapping = derive_wrapping_key(user_key, &kdf)?;
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ct = ChaCha20Poly1305::new(&wrapping)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &master[..],
                aad: WRAP_AAD,
            },
        )
        .map_err(|_| Error::Crypto("wrapping the master key failed".into()))?;
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&ct);
    Ok(EncryptionConfig {
        aead: "chacha20poly1305".into(),
        kdf,
        wrapped_key: hex::encode(wrapped),
    })
}

impl Crypto {
    /// Hashing/encoding without encryption.
    pub fn plain(zstd_level: i32) -> Crypto {
        Crypto {
            keys: None,
            zstd_level,
        }
    }

    /// Creates a fresh master secret wrapped by `user_key`.
    pub fn create(
        user_key: &[u8],
        memory_kib: u32,
        iterations: u32,
        zstd_level: i32,
    ) -> Result<(Crypto, EncryptionConfig)> {
        let mut master = [0u8; 64];
        rand::Rng::fill(&mut rand::thread_rng(), &mut master[..]);
        let cfg = wrap_master(&master, user_key, memory_kib, iterations)?;
        Ok((Self::from_master(&master, zstd_level), cfg))
    }

    /// [`Self::create`] with a fresh data key but this repository's chunk-id key, so both
    /// repositories name equal chunks alike (a copy target that deduplicates against the
    /// source); `None` when this one is not encrypted.
    pub fn create_sharing_chunk_ids(
        &self,
        user_key: &[u8],
        memory_kib: u32,
        iterations: u32,
        zstd_level: i32,
    ) -> Result<Option<(Crypto, EncryptionConfig)>> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let mut master = [0u8; 64];
        rand::Rng::fill(&mut rand::thread_rng(), &mut master[..32]);
        master[32..].copy_from_slice(&keys.id);
        let cfg = wrap_master(&master, user_key, memory_kib, iterations)?;
        Ok(Some((Self::from_master(&master, zstd_level), cfg)))
    }

    /// Another wrapped copy of this repository's master secret, unlocked by `user_key` (a new
    /// salt); [`Error::Invalid`] when the repository is not encrypted.
    pub fn wrap(
        &self,
        user_key: &[u8],
        memory_kib: u32,
        iterations: u32,
    ) -> Result<EncryptionConfig> {
        let Some(keys) = &self.keys else {
            return Err(Error::Invalid(
                "the repository is not encrypted: it has no keys".into(),
            ));
        };
        let mut master = [0u8; 64];
        master[..32].copy_from_slice(keys.data.as_slice());
        master[32..].copy_from_slice(&keys.id);
        let mut enc = wrap_master(&master, user_key, memory_kib, iterations)?;
        // Each wrapped copy names the repository's data cipher: opening with it must seal and
        // open blobs as the repository does.
        enc.aead = keys.cipher.name().to_string();
        Ok(enc)
    }

    /// Unwraps the master secret with `user_key`.
    pub fn open(
        cfg: &EncryptionConfig,
        user_key: &[u8],
        location: &str,
        zstd_level: i32,
    ) -> Result<Crypto> {
        let cipher = DataCipher::parse(&cfg.aead)?;
        let wrapping = derive_wrapping_key(user_key, &cfg.kdf)?;
        let wrapped = hex::decode(&cfg.wrapped_key)
            .map_err(|_| Error::corrupt("config.json", "wrapped key is not hex"))?;
        if wrapped.len() != NONCE_LEN + 64 + TAG_LEN {
            return Err(Error::corrupt(
                "config.json",
                "wrapped key has the wrong length",
            ));
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        let master = ChaCha20Poly1305::new(&wrapping)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: WRAP_AAD,
                },
            )
            .map_err(|_| Error::WrongKey {
                location: location.to_string(),
            })?;
        Ok(Self::from_master(&master, zstd_level).with_data_cipher(cipher))
    }

    /// This crypto sealing new blobs with `cipher` (init records it in config.json).
    pub fn with_data_cipher(mut self, cipher: DataCipher) -> Crypto {
        if let Some(k) = &mut self.keys {
            k.cipher = cipher;
        }
        self
    }

    /// The blob cipher (`None` when unencrypted).
    pub fn data_cipher(&self) -> Option<DataCipher> {
        self.keys.as_ref().map(|k| k.cipher)
    }

    fn from_master(master: &[u8], zstd_level: i32) -> Crypto {
        let mut data = [0u8; 32];
        data.copy_from_slice(&master[..32]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&master[32..64]);
        Crypto {
            keys: Some(Keys {
                data: Key::from(data),
                id,
                cipher: DataCipher::ChaCha20Poly1305,
            }),
            zstd_level,
        }
    }

    /// Whether objects are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// The chunk id of `data` (plain or keyed BLAKE3).
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        let mut h = match &self.keys {
            Some(k) => blake3::Hasher::new_keyed(&k.id),
            None => blake3::Hasher::new(),
        };
        h.update(data);
        ChunkId(*h.finalize().as_bytes())
    }

    /// Encodes a blob: header, optional zstd, optional encryption. `compress` = try zstd.
    ///
    /// The blob is built in one buffer: header (and nonce) first, zstd writes its frame right
    /// after them and the AEAD encrypts that in place, so a chunk's bytes are copied once (by
    /// the compressor, or one copy when stored raw).
    pub fn encode_blob(
        &self,
        magic: [u8; 4],
        key: &str,
        raw: &[u8],
        compress: bool,
    ) -> Result<Vec<u8>> {
        let prefix = BLOB_HEADER_LEN + if self.keys.is_some() { NONCE_LEN } else { 0 };
        let mut out = Vec::with_capacity(
            prefix + TAG_LEN + zstd::zstd_safe::compress_bound(raw.len()).max(raw.len()),
        );
        out.resize(prefix, 0);
        let mut flags = 0u16;
        if compress && self.compress_after(raw, &mut out) {
            flags |= FLAG_ZSTD;
        } else {
            out.truncate(prefix);
            out.extend_from_slice(raw);
        }
        if self.keys.is_some() {
            flags |= FLAG_ENCRYPTED;
        }
        let header = BlobHeader {
            magic,
            flags,
            raw_len: raw.len() as u64,
        }
        .encode();
        out[..BLOB_HEADER_LEN].copy_from_slice(&header);
        if let Some(k) = &self.keys {
            let nonce: [u8; NONCE_LEN] = rand::random();
            out[BLOB_HEADER_LEN..prefix].copy_from_slice(&nonce);
            let aad = [&header[..], key.as_bytes()].concat();
            let tag = seal_in_place(k, nonce, &aad, &mut out[prefix..])
                .map_err(|_| Error::Crypto(format!("encrypting `{key}` failed")))?;
            out.extend_from_slice(&tag);
        }
        Ok(out)
    }

    /// Appends the zstd frame of `raw` to `out` when it is smaller than `raw`; returns whether
    /// it did (on `false`, `out` may hold garbage after its original length). A 64 KiB sample
    /// from the middle decides quickly for incompressible data (≥ 97% of its size → raw).
    /// Uses this thread's reusable compression context (no per-chunk table allocation).
    fn compress_after(&self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        const SAMPLE: usize = 64 * 1024;
        let level = self.zstd_level;
        ZSTD_CCTX.with(|cell| {
            let mut cctx = cell.borrow_mut();
            if raw.len() > 4 * SAMPLE {
                let mid = raw.len() / 2;
                let sample = &raw[mid..mid + SAMPLE];
                let mut probe = Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE));
                match zstd_into(&mut cctx, 1, sample, &mut probe) {
                    Some(n) if n * 100 <= SAMPLE * 97 => {}
                    _ => return false,
                }
            }
            let start = out.len();
            match zstd_into(&mut cctx, level, raw, out) {
                Some(n) => n < raw.len(),
                None => {
                    out.truncate(start);
                    false
                }
            }
        })
    }

    /// Decodes a blob read from `key`: checks the header, decrypts, decompresses.
    pub fn decode_blob(&self, magic: [u8; 4], key: &str, data: &[u8]) -> Result<Vec<u8>> {
        let (header, payload) = self.open_blob(magic, key, data)?;
        decoded(key, &header, payload)
    }

    /// [`Self::decode_blob`], also returning the blob's zstd frame (decrypted) when it is
    /// stored compressed: a caller that sends the data on as zstd (the CDI upload) forwards the
    /// frame instead of compressing the chunk again. The frame is only returned together with
    /// the raw bytes it decodes to, so the caller can (and must) check those against the id.
    pub fn decode_blob_with_frame(
        &self,
        magic: [u8; 4],
        key: &str,
        data: &[u8],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let (header, payload) = self.open_blob(magic, key, data)?;
        let frame = (header.flags & FLAG_ZSTD != 0).then(|| payload.to_vec());
        let raw = decoded(key, &header, payload)?;
        Ok((raw, frame))
    }

    /// Checks the header and decrypts: the header and the (still compressed) payload.
    fn open_blob<'a>(
        &self,
        magic: [u8; 4],
        key: &str,
        data: &'a [u8],
    ) -> Result<(BlobHeader, std::borrow::Cow<'a, [u8]>)> {
        let header = BlobHeader::decode(key, data, magic)?;
        if header.raw_len > MAX_RAW_LEN {
            return Err(Error::corrupt(
                key,
                format!("raw length {} is implausible", header.raw_len),
            ));
        }
        let body = &data[BLOB_HEADER_LEN..];
        let payload = match (&self.keys, header.flags & FLAG_ENCRYPTED != 0) {
            (None, false) => std::borrow::Cow::Borrowed(body),
            (Some(k), true) => {
                if body.len() < NONCE_LEN + TAG_LEN {
                    return Err(Error::corrupt(key, "encrypted payload truncated"));
                }
                let (nonce, ct) = body.split_at(NONCE_LEN);
                let aad = [&data[..BLOB_HEADER_LEN], key.as_bytes()].concat();
                let plain = open_sealed(k, nonce, &aad, ct).map_err(|_| {
                    Error::corrupt(
                        key,
                        "authentication failed (modified, truncated or moved object)",
                    )
                })?;
                std::borrow::Cow::Owned(plain)
            }
            (None, true) => {
                return Err(Error::corrupt(
                    key,
                    "object is encrypted but the repository config says it is not",
                ))
            }
            (Some(_), false) => {
                return Err(Error::corrupt(
                    key,
                    "object is not encrypted in an encrypted repository",
                ))
            }
        };
        Ok((header, payload))
    }
}

/// Encrypts `buf` in place with the repository's data cipher; returns the tag.
fn seal_in_place(
    k: &Keys,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let tag = ring_key(k.cipher, &k.data)?
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            buf,
        )
        .map_err(|_| Error::Crypto("AEAD seal failed".into()))?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts and authenticates `ct` (ciphertext ‖ tag) with the repository's data cipher.
fn open_sealed(k: &Keys, nonce: &[u8], aad: &[u8], ct: &[u8]) -> Result<Vec<u8>> {
    let fail = || Error::Crypto("AEAD open failed".into());
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
    let mut buf = ct.to_vec();
    let n = ring_key(k.cipher, &k.data)?
        .open_in_place(nonce, ring::aead::Aad::from(aad), &mut buf)
        .map_err(|_| fail())?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// The raw bytes of a blob's (decrypted) payload, checked against the header's length.
/// A decrypted raw payload is returned as is (no copy).
fn decoded(key: &str, header: &BlobHeader, payload: std::borrow::Cow<'_, [u8]>) -> Result<Vec<u8>> {
    let raw = if header.flags & FLAG_ZSTD != 0 {
        decompress(key, &payload, header.raw_len)?
    } else {
        payload.into_owned()
    };
    if raw.len() as u64 != header.raw_len {
        return Err(Error::corrupt(
            key,
            format!(
                "decoded {} bytes, header says {}",
                raw.len(),
                header.raw_len
            ),
        ));
    }
    Ok(raw)
}

thread_local! {
    /// One zstd compression context per thread (the blocking pool's threads live on), so
    /// the hash and chain tables are allocated once, not per chunk.
    static ZSTD_CCTX: std::cell::RefCell<zstd::zstd_safe::CCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::CCtx::create());
    static ZSTD_DCTX: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
}

/// Appends one zstd frame (with its content size) of `src` at `level` to `out`; returns the
/// frame's length, or `None` if zstd failed (the caller stores the bytes raw).
fn zstd_into(
    cctx: &mut zstd::zstd_safe::CCtx<'static>,
    level: i32,
    src: &[u8],
    out: &mut Vec<u8>,
) -> Option<usize> {
    use zstd::zstd_safe::{
        zstd_sys::ZSTD_EndDirective, CParameter, InBuffer, OutBuffer, ResetDirective,
    };
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(src.len()));
    cctx.reset(ResetDirective::SessionAndParameters).ok()?;
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .ok()?;
    cctx.set_pledged_src_size(Some(src.len() as u64)).ok()?;
    let mut input = InBuffer::around(src);
    let mut output = OutBuffer::around_pos(out, start);
    // With compress_bound of room the frame is finished in one call; loop defensively.
    for _ in 0..4 {
        if cctx
            .compress_stream2(&mut output, &mut input, ZSTD_EndDirective::ZSTD_e_end)
            .ok()?
            == 0
        {
            let end = output.pos();
            return Some(end - start);
        }
    }
    None
}

/// Decodes a zstd payload that must produce exactly `raw_len` bytes. Up to 64 MiB the output
/// is allocated once at `raw_len` and decoded in one pass (a frame producing more fails as
/// "destination too small"); larger lengths are stream-decoded so that a lying header cannot
/// force an allocation bigger than what the frame really produces.
fn decompress(key: &str, payload: &[u8], raw_len: u64) -> Result<Vec<u8>> {
    let bad = |e: String| Error::corrupt(key, format!("zstd payload does not decode: {e}"));
    if raw_len <= 64 << 20 {
        let mut out = Vec::with_capacity(raw_len as usize);
        ZSTD_DCTX.with(|cell| {
            let mut dctx = cell.borrow_mut();
            let _ = dctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
            dctx.decompress(&mut out, payload)
                .map(|_| ())
                .map_err(|code| bad(zstd::zstd_safe::get_error_name(code).to_string()))
        })?;
        return Ok(out);
    }
    use std::io::Read;
    let mut out = Vec::with_capacity(64 << 20);
    let dec = zstd::stream::read::Decoder::with_buffer(payload).map_err(|e| bad(e.to_string()))?;
    dec.take(raw_len + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CHUNK_MAGIC, OBJECT_MAGIC};

    const MEM: u32 = 256;

    #[test]
    fn plain_blob_roundtrip_compressed_and_raw() {
        let c = Crypto::plain(3);
        let text = b"hello world ".repeat(50_000);
        let b = c.encode_blob(CHUNK_MAGIC, "k", &text, true).unwrap();
        assert!(b.len() < text.len() / 10);
        assert_eq!(c.decode_blob(CHUNK_MAGIC, "k", &b).unwrap(), text);
        let random: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        let b = c.encode_blob(CHUNK_MAGIC, "k", &random, true).unwrap();
        assert_eq!(
            b.len(),
            random.len() + BLOB_HEADER_LEN,
            "incompressible data is stored raw"
        );
        assert_eq!(c.decode_blob(CHUNK_MAGIC, "k", &b).unwrap(), random);
    }

    #[test]
    fn encrypted_blob_is_bound_to_key_and_detects_flips() {
        let (c, cfg) = Crypto::create(b"secret pass", MEM, 1, 3).unwrap();
        let data = b"abc".repeat(1000);
        let b = c
            .encode_blob(OBJECT_MAGIC, "backups/a/b/x/manifest.json", &data, true)
            .unwrap();
        assert!(
            !b.windows(3).any(|w| w == b"abc"),
            "payload must not appear in clear"
        );
        assert_eq!(
            c.decode_blob(OBJECT_MAGIC, "backups/a/b/x/manifest.json", &b)
                .unwrap(),
            data
        );
        assert!(c
            .decode_blob(OBJECT_MAGIC, "backups/a/b/y/manifest.json", &b)
            .is_err());
        let mut flipped = b.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(c
            .decode_blob(OBJECT_MAGIC, "backups/a/b/x/manifest.json", &flipped)
            .is_err());
        // Reopen with the same key: same ids; wrong key: WrongKey.
        let again = Crypto::open(&cfg, b"secret pass", "loc", 3).unwrap();
        assert_eq!(again.chunk_id(b"x"), c.chunk_id(b"x"));
        assert_ne!(
            c.chunk_id(b"x"),
            Crypto::plain(3).chunk_id(b"x"),
            "keyed ids differ from plain"
        );
        assert!(matches!(
            Crypto::open(&cfg, b"wrong", "loc", 3),
            Err(Error::WrongKey { .. })
        ));
        assert!(!format!("{c:?}").contains(&cfg.wrapped_key));
    }

    #[test]
    fn reused_contexts_across_levels_and_lengths() {
        // The thread-local zstd contexts switch level and frame size between calls; every
        // blob must decode to its input, and a header length off by one either way fails.
        let text = b"some words repeat, some words repeat more often than others\n".repeat(9000);
        for (level, len) in [(1, text.len()), (19, 1000), (2, 300_000), (3, 17)] {
            let c = Crypto::plain(level);
            let b = c.encode_blob(CHUNK_MAGIC, "k", &text[..len], true).unwrap();
            assert_eq!(c.decode_blob(CHUNK_MAGIC, "k", &b).unwrap(), &text[..len]);
            if b[6] & 1 == 1 {
                for wrong in [len as u64 - 1, len as u64 + 1] {
                    let mut w = b.clone();
                    w[8..16].copy_from_slice(&wrong.to_le_bytes());
                    assert!(c.decode_blob(CHUNK_MAGIC, "k", &w).is_err(), "len {wrong}");
                }
            }
        }
        let (c, _) = Crypto::create(b"k", MEM, 1, 2).unwrap();
        let b = c
            .encode_blob(CHUNK_MAGIC, "chunks/ab/x", &text, true)
            .unwrap();
        assert!(b.len() < text.len() / 5);
        assert_eq!(c.decode_blob(CHUNK_MAGIC, "chunks/ab/x", &b).unwrap(), text);
    }

    #[test]
    fn both_ciphers_roundtrip_and_do_not_read_each_other() {
        let (chacha, mut cfg) = Crypto::create(b"k", MEM, 1, 3).unwrap();
        assert_eq!(chacha.data_cipher(), Some(DataCipher::ChaCha20Poly1305));
        let aes = chacha.clone().with_data_cipher(DataCipher::Aes256Gcm);
        let text = b"text that compresses, text that compresses\n".repeat(2000);
        let random: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        for data in [&text[..], &random[..], b""] {
            let a = aes
                .encode_blob(CHUNK_MAGIC, "chunks/ab/x", data, true)
                .unwrap();
            let c = chacha
                .encode_blob(CHUNK_MAGIC, "chunks/ab/x", data, true)
                .unwrap();
            assert_eq!(
                aes.decode_blob(CHUNK_MAGIC, "chunks/ab/x", &a).unwrap(),
                data
            );
            assert_eq!(
                chacha.decode_blob(CHUNK_MAGIC, "chunks/ab/x", &c).unwrap(),
                data
            );
            assert!(chacha.decode_blob(CHUNK_MAGIC, "chunks/ab/x", &a).is_err());
            assert!(aes.decode_blob(CHUNK_MAGIC, "chunks/ab/x", &c).is_err());
            // AES blobs are bound to their key and detect flips like ChaCha ones.
            assert!(aes.decode_blob(CHUNK_MAGIC, "chunks/ab/y", &a).is_err());
            let mut flipped = a.clone();
            flipped[BLOB_HEADER_LEN + NONCE_LEN] ^= 1;
            assert!(aes
                .decode_blob(CHUNK_MAGIC, "chunks/ab/x", &flipped)
                .is_err());
        }
        // open() picks the cipher config.json names.
        cfg.aead = DataCipher::Aes256Gcm.name().into();
        let reopened = Crypto::open(&cfg, b"k", "loc", 3).unwrap();
        assert_eq!(reopened.data_cipher(), Some(DataCipher::Aes256Gcm));
        let a = aes
            .encode_blob(OBJECT_MAGIC, "o", b"manifest", false)
            .unwrap();
        assert_eq!(
            reopened.decode_blob(OBJECT_MAGIC, "o", &a).unwrap(),
            b"manifest"
        );
        cfg.aead = "rot13".into();
        let err = Crypto::open(&cfg, b"k", "loc", 3).unwrap_err();
        assert!(err.to_string().contains("rot13"), "{err}");
    }

    #[test]
    fn plain_reader_rejects_encrypted_blob() {
        let (c, _) = Crypto::create(b"k", MEM, 1, 3).unwrap();
        let b = c.encode_blob(CHUNK_MAGIC, "k", b"data", false).unwrap();
        assert!(Crypto::plain(3).decode_blob(CHUNK_MAGIC, "k", &b).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Crypto::plain(3).decode_blob(CHUNK_MAGIC, "k", &data);
        }
    }
}
