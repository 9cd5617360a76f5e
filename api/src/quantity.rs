//! Kubernetes resource quantities (`10Gi`, `512Mi`, `1G`, `1500m`, `1e9`) as byte counts: the one
//! parser for the storage sizes virtguard reads from PVCs, snapshots and DataVolumes.
//!
//! Invariant: whole numbers with a binary or decimal suffix are computed exactly in integers;
//! fractions, milli-units and exponents go through `f64` and are rounded **up** to a whole byte
//! (a size is a lower bound that must hold the data). Negative, overflowing or unparsable values
//! give `None`, never a panic.

/// The number of bytes `q` stands for, if it is a valid non-negative quantity.
pub fn bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let exact: Option<u64> = match suffix {
        "" => Some(1),
        "k" => Some(1_000),
        "M" => Some(1_000_000),
        "G" => Some(1_000_000_000),
        "T" => Some(1_000_000_000_000),
        "P" => Some(1_000_000_000_000_000),
        "E" => Some(1_000_000_000_000_000_000),
        "Ki" => Some(1 << 10),
        "Mi" => Some(1 << 20),
        "Gi" => Some(1 << 30),
        "Ti" => Some(1 << 40),
        "Pi" => Some(1 << 50),
        "Ei" => Some(1 << 60),
        _ => None,
    };
    if let (Some(mult), Ok(n)) = (exact, num.parse::<u64>()) {
        return n.checked_mul(mult);
    }
    let mult = match (exact, suffix) {
        (Some(m), _) => m as f64,
        (None, "m") => 1e-3,
        (None, s) if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let v = (num.parse::<f64>().ok()? * mult).ceil();
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn quantities() {
        assert_eq!(bytes("10Gi"), Some(10 << 30));
        assert_eq!(bytes("512Mi"), Some(512 << 20));
        assert_eq!(bytes("6Mi"), Some(6 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("100"), Some(100));
        assert_eq!(bytes(" 1048576 "), Some(1 << 20));
        assert_eq!(bytes("1500m"), Some(2));
        // Exact where f64 would round: 2^53 + 1.
        assert_eq!(bytes("9007199254740993"), Some(9_007_199_254_740_993));
        for bad in ["-1Gi", "ten", "1Zi", "", "Gi", "16Ei", "1e400"] {
            assert_eq!(bytes(bad), None, "{bad}");
        }
    }
}
