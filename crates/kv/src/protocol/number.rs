//! Numbers in request tokens, accepted and rejected exactly as memcached's `safe_strto*` helpers do.
//!
//! Those helpers are glibc `strtol`/`strtoul`/`strtoull` (base 10, 64-bit `long`) plus a few checks, and
//! their quirks are visible on the wire, so a drop-in must copy them rather than use `str::parse`:
//! leading whitespace and a `+`/`-` sign are accepted; after the digits only the end of the token or a
//! whitespace byte may follow (`"5\tzz"` is 5, `"5zz"` is an error); a 32-bit result is the 64-bit value
//! truncated (flags `4294967296` store as 0, exptime `-2147483649` as 2147483647); an unsigned value with a
//! `-` is accepted unless it wraps to a negative `i64` (`"-0"` is 0 and `"-18446744073709551615"` is 1, but
//! `"-1"` is an error); only overflow past 64 bits is an error.

/// C `isspace` in the C locale.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// What glibc's `strto*` scanned: sign, magnitude (`None` when past `u64`) and where the digits ended.
struct Scan {
    negative: bool,
    magnitude: Option<u64>,
    end: usize,
}

fn scan(tok: &[u8]) -> Option<Scan> {
    let mut i = tok.iter().take_while(|&&b| is_c_space(b)).count();
    let negative = tok.get(i) == Some(&b'-');
    if matches!(tok.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = tok[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None; // endptr == str: nothing converted
    }
    let magnitude = tok[i..i + digits]
        .iter()
        .try_fold(0u64, |acc, &d| acc.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))));
    Some(Scan { negative, magnitude, end: i + digits })
}

/// memcached's trailing check: the token ends, or a whitespace byte follows the digits.
fn tail_ok(tok: &[u8], end: usize) -> bool {
    end == tok.len() || is_c_space(tok[end])
}

/// `strtoull` with memcached's checks, as `safe_strtoull` (and, truncated, `safe_strtoul`).
fn unsigned(tok: &[u8]) -> Option<u64> {
    let s = scan(tok)?;
    let magnitude = s.magnitude?; // ERANGE
    if !tail_ok(tok, s.end) {
        return None;
    }
    let value = if s.negative { magnitude.wrapping_neg() } else { magnitude };
    // "only check for negative signs in the uncommon case when the unsigned number is so big that it's
    // negative as a signed number": the whole token is searched for '-'.
    if (value as i64) < 0 && tok.contains(&b'-') {
        return None;
    }
    Some(value)
}

/// `safe_strtoull`: a 64-bit unsigned number (incr/decr delta, cas unique, meta `C`/`J`/`D`).
pub(crate) fn strtoull(tok: &[u8]) -> Option<u64> {
    unsigned(tok)
}

/// `safe_strtoul`: a 32-bit unsigned number (client flags, verbosity), truncated from 64 bits.
pub(crate) fn strtoul(tok: &[u8]) -> Option<u32> {
    unsigned(tok).map(|v| v as u32)
}

/// `safe_strtol`: a 32-bit signed number (exptime, value length, meta `T`/`N`/`R`), truncated from 64 bits.
pub(crate) fn strtol(tok: &[u8]) -> Option<i32> {
    let s = scan(tok)?;
    let magnitude = s.magnitude?;
    let value = match (s.negative, magnitude) {
        (false, m) if m <= i64::MAX as u64 => m as i64,
        (true, m) if m <= 1 << 63 => (m as i64).wrapping_neg(),
        _ => return None, // ERANGE
    };
    tail_ok(tok, s.end).then_some(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_like_memcached() {
        assert_eq!(strtol(b"0"), Some(0));
        assert_eq!(strtol(b"+5"), Some(5));
        assert_eq!(strtol(b"\t5"), Some(5));
        assert_eq!(strtol(b"5\t"), Some(5));
        assert_eq!(strtol(b"5\tzz"), Some(5));
        assert_eq!(strtol(b"5\r"), Some(5));
        assert_eq!(strtol(b"5zz"), None);
        assert_eq!(strtol(b""), None);
        assert_eq!(strtol(b"-"), None);
        assert_eq!(strtol(b"x"), None);
        assert_eq!(strtol(b"0x10"), None);
        assert_eq!(strtol(b"-2147483648"), Some(i32::MIN));
        // Observed: exptime 2147483648 stores an already-expired item, -2147483649 a live one.
        assert_eq!(strtol(b"2147483648"), Some(i32::MIN));
        assert_eq!(strtol(b"-2147483649"), Some(i32::MAX));
        assert_eq!(strtol(b"4294967297"), Some(1));
        assert_eq!(strtol(b"-9223372036854775808"), Some(0));
        assert_eq!(strtol(b"9223372036854775808"), None);
        assert_eq!(strtol(b"-9223372036854775809"), None);
    }

    #[test]
    fn unsigned_like_memcached() {
        assert_eq!(strtoul(b"4294967295"), Some(u32::MAX));
        assert_eq!(strtoul(b"4294967296"), Some(0));
        assert_eq!(strtoul(b"18446744073709551615"), Some(u32::MAX));
        assert_eq!(strtoul(b"18446744073709551616"), None);
        assert_eq!(strtoul(b"-0"), Some(0));
        assert_eq!(strtoul(b"-1"), None);
        assert_eq!(strtoul(b"-18446744073709551615"), Some(1));
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
        assert_eq!(strtoull(b"-9223372036854775809"), Some(i64::MAX as u64));
        assert_eq!(strtoull(b"-1"), None);
        assert_eq!(strtoull(b"1x"), None);
    }
}
