//! The `date` header line of an answer the plain lane writes itself
//! ([`crate::plain_lane`]).
//!
//! Formatting an HTTP date is far more work than the rest of a cached
//! answer's head, so, as hyper does, each thread formats it once per second
//! and copies it from there.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `date: ` + an IMF-fixdate (always 29 bytes) + CRLF.
const LINE_BYTES: usize = 6 + 29 + 2;

thread_local! {
    static CACHED: RefCell<DateLine> = const { RefCell::new(DateLine { second: u64::MAX, line: Vec::new() }) };
}

struct DateLine {
    /// The Unix second `line` shows; `u64::MAX` before the first use.
    second: u64,
    line: Vec<u8>,
}

/// Appends `date: <now>\r\n` to `dst`.
pub fn extend_date_line(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|cached| {
        if cached.second != second {
            cached.line.clear();
            cached.line.extend_from_slice(b"date: ");
            cached.line.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            cached.line.extend_from_slice(b"\r\n");
            assert_eq!(cached.line.len(), LINE_BYTES, "an HTTP date is 29 bytes");
            cached.second = second;
        }
        dst.extend_from_slice(&cached.line);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_line_of_now() {
        let mut out = b"x\r\n".to_vec();
        extend_date_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        let date = text.strip_prefix("x\r\ndate: ").unwrap().strip_suffix("\r\n").unwrap();
        let parsed = httpdate::parse_http_date(date).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 5, "{date} is now");
        let mut again = Vec::new();
        extend_date_line(&mut again);
        assert_eq!(again.len(), LINE_BYTES);
    }
}
