//! Transfer rates: parsed from `10M`, `100Mbit`, `off` and the like.

use std::fmt;
use std::str::FromStr;

use super::ThrottleError;

/// A transfer rate in bytes per second; `None` is unlimited.
///
/// `Rate(Some(0))` is treated as unlimited too, as `0` is on the command line
/// (`--bwlimit 0`): pausing is a [`Window`](super::Window)'s job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rate(pub Option<u64>);

/// The rate under which a limit is surely a slip (a bare number read as
/// bytes/s, as before): 1 KiB/s.
pub const SLOW_RATE: u64 = 1 << 10;

impl Rate {
    /// The limit in bytes per second, or `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        self.0.filter(|&r| r > 0)
    }

    /// Whether it limits to under [`SLOW_RATE`], which callers warn of.
    pub fn is_slow(self) -> bool {
        self.bytes_per_sec().is_some_and(|r| r < SLOW_RATE)
    }
}

impl FromStr for Rate {
    type Err = ThrottleError;

    /// `off`, `unlimited` and `0` are unlimited; a plain number is KiB/s, as
    /// rsync and rclone read it (`100` is 100 KiB/s); `500K`, `10M`, `1.5G`,
    /// `2T` (binary multiples, optional `B` or `iB`) and `B` (`1234B`) are
    /// bytes/s; `512kbit`, `100Mbit`, `1.5Gbit` are decimal bits/s.
    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Rate, ThrottleError> {
        let bad = || ThrottleError::Rate(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        if lower == "off" || lower == "unlimited" {
            return Ok(Rate(None));
        }
        let split = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
        let (number, unit) = lower.split_at(split);
        // bytes/s = number * mul / div
        let (mul, div): (u128, u128) = match unit {
            "b" => (1, 1),
            "" | "k" | "kb" | "kib" => (1 << 10, 1),
            "m" | "mb" | "mib" => (1 << 20, 1),
            "g" | "gb" | "gib" => (1 << 30, 1),
            "t" | "tb" | "tib" => (1 << 40, 1),
            "bit" => (1, 8),
            "kbit" => (1_000, 8),
            "mbit" => (1_000_000, 8),
            "gbit" => (1_000_000_000, 8),
            "tbit" => (1_000_000_000_000, 8),
            _ => return Err(bad()),
        };
        let (int, frac) = match number.split_once('.') {
            Some((int, frac)) if !frac.is_empty() => (int, frac),
            Some(_) => return Err(bad()),
            None => (number, ""),
        };
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // Exact decimal arithmetic: 1.5G is 1610612736, not a float's guess.
        // Digits past the 18th fraction digit cannot change a whole byte/s.
        let frac = &frac[..frac.len().min(18)];
        let too_large = || ThrottleError::RateTooLarge(s.to_string());
        let scale = 10u128.pow(frac.len() as u32);
        let int: u128 = int.parse().map_err(|_| too_large())?;
        let frac: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        let scaled = int.checked_mul(scale).and_then(|v| v.checked_add(frac)).ok_or_else(too_large)?;
        if scaled == 0 {
            return Ok(Rate(None));
        }
        let den = scale * div;
        let rounded = scaled.checked_mul(mul).and_then(|n| n.checked_add(den / 2));
        let bytes = rounded.ok_or_else(too_large)? / den;
        // A positive rate under 1 byte/s rounds up, not to 0 (unlimited).
        let bytes = u64::try_from(bytes.max(1)).map_err(|_| too_large())?;
        Ok(Rate(Some(bytes)))
    }
}

impl fmt::Display for Rate {
    /// `off`, or the largest binary multiple that is exact (`512K`, `10M`),
    /// else bytes with their unit (`1000B`), so that the text parses back
    /// to the same rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bytes) = self.bytes_per_sec() else { return f.write_str("off") };
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if bytes % (1 << shift) == 0 {
                return write!(f, "{}{unit}", bytes >> shift);
            }
        }
        write!(f, "{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

    fn rate(s: &str) -> Option<u64> {
        s.parse::<Rate>().unwrap().0
    }

    #[test]
    fn rate_parses_binary_multiples() {
        for s in ["500K", "500k", "500KB", "500KiB", "500kib", "500kB"] {
            assert_eq!(rate(s), Some(500 * KIB), "{s}");
        }
        assert_eq!(rate("10M"), Some(10 * MIB));
        assert_eq!(rate("10MiB"), Some(10 * MIB));
        assert_eq!(rate("1.5G"), Some(1_610_612_736));
        assert_eq!(rate("1.5gib"), Some(1_610_612_736));
        assert_eq!(rate("2T"), Some(2 << 40));
        assert_eq!(rate("0.5K"), Some(512));
        assert_eq!(rate(" 10M "), Some(10 * MIB));
    }

    #[test]
    fn rate_parses_bytes_with_their_unit() {
        assert_eq!(rate("1234B"), Some(1234));
        assert_eq!(rate("1b"), Some(1));
    }

    /// rsync and rclone read `--bwlimit 100` as 100 KiB/s; so does xfer.
    #[test]
    fn rate_plain_numbers_are_kib() {
        assert_eq!(rate("100"), Some(100 * KIB));
        assert_eq!(rate("1"), Some(KIB));
        assert_eq!(rate("0.5"), Some(512));
        assert_eq!(rate("1234"), Some(1234 * KIB));
    }

    #[test]
    fn rate_under_a_kib_is_slow() {
        for s in ["1000B", "0.5", "80bit", "1023b"] {
            assert!(s.parse::<Rate>().unwrap().is_slow(), "{s}");
        }
        for s in ["1", "1024B", "off", "0", "10M"] {
            assert!(!s.parse::<Rate>().unwrap().is_slow(), "{s}");
        }
    }

    #[test]
    fn rate_parses_decimal_bits() {
        assert_eq!(rate("100Mbit"), Some(12_500_000));
        assert_eq!(rate("100mbit"), Some(12_500_000));
        assert_eq!(rate("1.5Gbit"), Some(187_500_000));
        assert_eq!(rate("512kbit"), Some(64_000));
        assert_eq!(rate("1Tbit"), Some(125_000_000_000));
        assert_eq!(rate("80bit"), Some(10));
        // Under 1 B/s rounds up rather than to 0, which would mean unlimited.
        assert_eq!(rate("1bit"), Some(1));
    }

    #[test]
    fn rate_off_unlimited_and_zero_are_unlimited() {
        for s in ["off", "OFF", "Off", "unlimited", "Unlimited", "0", "0K", "0.0M", "0Mbit"] {
            assert_eq!(rate(s), None, "{s}");
        }
        assert_eq!(Rate(Some(0)).bytes_per_sec(), None);
        assert_eq!(Rate(Some(5)).bytes_per_sec(), Some(5));
    }

    #[test]
    fn rate_errors_say_what_is_expected() {
        assert_eq!(
            "10Q".parse::<Rate>().unwrap_err().to_string(),
            "\"10Q\" is not a rate: use e.g. 500K, 10M, 1.5G (bytes/s), 100 (KiB/s) or 100Mbit (bits/s), or off"
        );
        for s in ["", "K", "M10", "-1M", "+1M", "1.2.3M", "1e6", "10 M", "fast", "1,5M", "5.", ".5K", "10Mb/s", "1KKB"]
        {
            assert_eq!(s.parse::<Rate>(), Err(ThrottleError::Rate(s.to_string())), "{s:?}");
        }
    }

    #[test]
    fn rate_too_large_is_an_error() {
        assert_eq!(rate("16777215T"), Some(16_777_215 << 40));
        for s in ["16777216T", "99999999999999999999", "1e", "123456789012345678901234567890123456789012T"] {
            let err = s.parse::<Rate>().unwrap_err();
            if s == "1e" {
                assert_eq!(err, ThrottleError::Rate(s.to_string()));
            } else {
                assert_eq!(err, ThrottleError::RateTooLarge(s.to_string()), "{s}");
                assert!(err.to_string().contains("at most 16777215T"));
            }
        }
    }

    /// A rate whose bytes times the unit land within rounding of u128's
    /// end: rounding overflowed (a panic with overflow checks, and in a
    /// release build the wrapped sum parsed as 1 B/s).
    #[test]
    fn rate_at_the_end_of_u128_is_too_large() {
        // (2^88 - 1) * 2^40 = 2^128 - 2^40, plus half of 10^18 wraps.
        for s in ["309485009.821345068724781055T", "309485009.821345068724781055TiB"] {
            assert_eq!(s.parse::<Rate>(), Err(ThrottleError::RateTooLarge(s.to_string())), "{s}");
        }
    }

    #[test]
    fn rate_display() {
        assert_eq!(Rate(None).to_string(), "off");
        assert_eq!(Rate(Some(0)).to_string(), "off");
        assert_eq!(Rate(Some(512 * KIB)).to_string(), "512K");
        assert_eq!(Rate(Some(1536 * MIB)).to_string(), "1536M");
        assert_eq!(Rate(Some(3 << 40)).to_string(), "3T");
        assert_eq!(Rate(Some(1000)).to_string(), "1000B");
    }

    proptest! {
        #[test]
        fn rate_display_parses_back(bytes in 1u64..) {
            prop_assert_eq!(Rate(Some(bytes)).to_string().parse::<Rate>(), Ok(Rate(Some(bytes))));
        }
    }
}
