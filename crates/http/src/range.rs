//! The `Range` request header (RFC 9110 §14), single byte ranges only.
//!
//! A malformed header, another unit, or a request for several ranges is
//! ignored and the whole file is sent with 200, as the RFC allows: serving
//! `multipart/byteranges` buys little (clients ask for one range at a time
//! to resume) and costs a second body format.

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: send the whole file with 200.
    Whole,
    /// Bytes `start..=end`, already clamped to the file: send 206.
    Partial { start: u64, end: u64 },
    /// A valid range wholly past the end: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl RangeRequest {
    /// Interprets the header value (if any) against a file of `len` bytes.
    pub fn parse(header: Option<&str>, len: u64) -> RangeRequest {
        let Some(value) = header else {
            return RangeRequest::Whole;
        };
        let value = value.trim();
        let Some(unit) = value.get(..6) else {
            return RangeRequest::Whole;
        };
        if !unit.eq_ignore_ascii_case("bytes=") {
            return RangeRequest::Whole;
        }
        let spec = value[6..].trim();
        if spec.contains(',') {
            return RangeRequest::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return RangeRequest::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // Suffix range: the last `n` bytes.
            let Some(n) = digits(last) else {
                return RangeRequest::Whole;
            };
            if n == 0 {
                return RangeRequest::Unsatisfiable;
            }
            if len == 0 {
                // Satisfiable by the RFC, but no Content-Range can describe
                // zero bytes; the whole (empty) file says the same thing.
                return RangeRequest::Whole;
            }
            return RangeRequest::Partial { start: len - n.min(len), end: len - 1 };
        }
        let Some(start) = digits(first) else {
            return RangeRequest::Whole;
        };
        let end = if last.is_empty() {
            u64::MAX
        } else {
            match digits(last) {
                Some(end) if end >= start => end,
                _ => return RangeRequest::Whole,
            }
        };
        if start >= len {
            return RangeRequest::Unsatisfiable;
        }
        RangeRequest::Partial { start, end: end.min(len - 1) }
    }
}

/// A run of ASCII digits; values past `u64::MAX` saturate (a position that
/// large is past any file, which is what the sender meant).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::{self, *};

    fn r(h: &str, len: u64) -> RangeRequest {
        RangeRequest::parse(Some(h), len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(RangeRequest::parse(None, 10), Whole);
        assert_eq!(r("bytes=0-0", 1000), Partial { start: 0, end: 0 });
        assert_eq!(r("bytes=0-499", 1000), Partial { start: 0, end: 499 });
        assert_eq!(r("bytes=10-", 1000), Partial { start: 10, end: 999 });
        assert_eq!(r("bytes=-500", 1000), Partial { start: 500, end: 999 });
        assert_eq!(r("bytes=-5000", 1000), Partial { start: 0, end: 999 }, "suffix longer than the file");
        assert_eq!(r("bytes=990-5000", 1000), Partial { start: 990, end: 999 }, "end clamped");
        assert_eq!(r("bytes=999-999", 1000), Partial { start: 999, end: 999 });
        assert_eq!(r("BYTES=1-2", 1000), Partial { start: 1, end: 2 }, "unit is case-insensitive");
        assert_eq!(r("  bytes= 1 - 2 ", 1000), Partial { start: 1, end: 2 });
        assert_eq!(r("bytes=5-99999999999999999999999", 10), Partial { start: 5, end: 9 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(r("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(r("bytes=1000-2000", 1000), Unsatisfiable);
        assert_eq!(r("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-", 10), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-4",
            "bytes=0-1,3-4",
            "bytes=1",
            "bytes=+1-2",
            "bytes=-+2",
            "items=0-1",
            "bytes=0x1-2",
            "é",
            "bytes=1-2-3",
        ] {
            assert_eq!(r(h, 1000), Whole, "{h:?}");
        }
        assert_eq!(r("bytes=-5", 0), Whole, "an empty file has no describable range");
    }
}
