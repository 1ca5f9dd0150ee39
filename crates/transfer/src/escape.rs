//! Percent-escaping of names inside INFO lines.
//!
//! INFO lines are space-separated words and `key=value` pairs, so a name
//! with a space or `=` would be ambiguous. Names are sent with `%`, space,
//! `=` and control bytes written as `%XX`; everything else (including
//! non-ASCII UTF-8) is sent as is.

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if ch == '%' || ch == '=' || ch == ' ' || (ch as u32) < 0x20 || ch as u32 == 0x7f {
            out.push_str(&format!("%{:02X}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// Reverses [`escape`]. `None` for a malformed escape or a result that is
/// not UTF-8.
pub fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_separators_and_controls() {
        assert_eq!(escape("a b=c%d\n"), "a%20b%3Dc%25d%0A");
        assert_eq!(escape("dir/naïve.txt"), "dir/naïve.txt");
        assert_eq!(unescape("a%20b%3Dc%25d%0A").as_deref(), Some("a b=c%d\n"));
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        assert_eq!(unescape("%"), None);
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%FF"), None);
    }

    proptest! {
        #[test]
        fn round_trips(s in ".*") {
            let e = escape(&s);
            prop_assert!(!e.contains(' ') && !e.contains('='));
            prop_assert_eq!(unescape(&e), Some(s));
        }
    }
}
