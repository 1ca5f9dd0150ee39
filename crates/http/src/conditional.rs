//! Conditional requests (RFC 9110 §13) against a stored file's validators:
//! its strong `ETag` (the store's etag, quoted) and its `Last-Modified`.
//!
//! Evaluated in the RFC's order for GET and HEAD: `If-None-Match` (weak
//! comparison, lists and `*`) and, only when it is absent,
//! `If-Modified-Since`, either giving 304; then `Range`, honoured only if
//! `If-Range` (strong etag, or a date that exactly matches a strong
//! `Last-Modified`) still holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
use ferry_files::{Etag, FileMeta};

use crate::range::RangeRequest;

/// What a GET or HEAD should answer, validators considered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 304: the client's copy is current.
    NotModified,
    /// 200, 206 or 416 as the range says.
    Send(RangeRequest),
}

/// The `ETag` header value: the store's etag as a strong entity-tag.
pub fn etag_header(etag: &Etag) -> String {
    format!("\"{etag}\"")
}

/// The file's modification time, whole seconds (HTTP dates have no more).
pub fn modified_secs(meta: &FileMeta) -> u64 {
    meta.modified_unix_ms / 1000
}

/// The `Last-Modified` header value.
pub fn last_modified_header(meta: &FileMeta) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified_secs(meta)))
}

/// Decides between 304 and sending (some of) the file.
pub fn evaluate(headers: &HeaderMap, meta: &FileMeta, now: SystemTime) -> Verdict {
    let inm: Vec<&str> = headers.get_all(IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).collect();
    if !inm.is_empty() {
        if inm.iter().any(|v| none_match_hits(v, &meta.etag)) {
            return Verdict::NotModified;
        }
    } else if let Some(since) = header_date(headers, IF_MODIFIED_SINCE)
        && modified_secs(meta) <= since
    {
        return Verdict::NotModified;
    }
    let range = headers.get(RANGE).and_then(|v| v.to_str().ok());
    if range.is_none() {
        return Verdict::Send(RangeRequest::Whole);
    }
    if let Some(cond) = headers.get(IF_RANGE)
        && !cond.to_str().is_ok_and(|c| if_range_holds(c, meta, now))
    {
        return Verdict::Send(RangeRequest::Whole);
    }
    Verdict::Send(RangeRequest::parse(range, meta.size))
}

fn header_date(headers: &HeaderMap, name: axum::http::HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(value.trim()).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// `If-None-Match`: `*` or a list of entity-tags, compared weakly (a `W/`
/// prefix is ignored). A malformed list matches nothing after the fault.
fn none_match_hits(value: &str, etag: &Etag) -> bool {
    if value.trim() == "*" {
        return true;
    }
    EntityTags(value).any(|(_weak, tag)| tag == etag.as_str())
}

/// `If-Range`: an entity-tag must match strongly; a date must equal the
/// `Last-Modified` we would send, and only if that is strong — at least a
/// second older than now, so no second write within the same second can
/// hide behind it.
fn if_range_holds(value: &str, meta: &FileMeta, now: SystemTime) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let mut tags = EntityTags(value);
        return match (tags.next(), tags.next()) {
            (Some((false, tag)), None) => tag == meta.etag.as_str(),
            _ => false,
        };
    }
    let Ok(date) = httpdate::parse_http_date(value) else {
        return false;
    };
    let Ok(date) = date.duration_since(UNIX_EPOCH) else {
        return false;
    };
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    date.as_secs() == modified_secs(meta) && modified_secs(meta) < now_secs
}

/// Iterates `(weak, opaque-tag)` over a comma-separated entity-tag list.
struct EntityTags<'a>(&'a str);

impl<'a> Iterator for EntityTags<'a> {
    type Item = (bool, &'a str);

    fn next(&mut self) -> Option<(bool, &'a str)> {
        let rest = self.0.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let (weak, rest) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some(rest) = rest.strip_prefix('"') else {
            self.0 = "";
            return None;
        };
        let Some(close) = rest.find('"') else {
            self.0 = "";
            return None;
        };
        let tag = &rest[..close];
        self.0 = &rest[close + 1..];
        Some((weak, tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn meta() -> FileMeta {
        FileMeta { size: 1000, etag: Etag::parse("3e8-17-2a").unwrap(), modified_unix_ms: 1_700_000_000_500 }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn eval(pairs: &[(&str, &str)]) -> Verdict {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        evaluate(&h, &meta(), now())
    }

    const TAG: &str = "\"3e8-17-2a\"";
    const DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    #[test]
    fn validators_format() {
        assert_eq!(etag_header(&meta().etag), TAG);
        assert_eq!(last_modified_header(&meta()), DATE);
    }

    #[test]
    fn if_none_match() {
        assert_eq!(eval(&[("if-none-match", TAG)]), Verdict::NotModified);
        assert_eq!(eval(&[("if-none-match", "W/\"3e8-17-2a\"")]), Verdict::NotModified, "weak comparison");
        assert_eq!(eval(&[("if-none-match", "\"x\", \"3e8-17-2a\"")]), Verdict::NotModified);
        assert_eq!(eval(&[("if-none-match", "\"x\""), ("if-none-match", TAG)]), Verdict::NotModified);
        assert_eq!(eval(&[("if-none-match", "*")]), Verdict::NotModified);
        assert_eq!(eval(&[("if-none-match", "\"other\"")]), Verdict::Send(RangeRequest::Whole));
        assert_eq!(eval(&[("if-none-match", "3e8-17-2a")]), Verdict::Send(RangeRequest::Whole), "unquoted");
        assert_eq!(eval(&[("if-none-match", "\"3e8-17-2a")]), Verdict::Send(RangeRequest::Whole), "unterminated");
        // A present If-None-Match overrides If-Modified-Since.
        let later = "Wed, 15 Nov 2023 00:00:00 GMT";
        assert_eq!(
            eval(&[("if-none-match", "\"other\""), ("if-modified-since", later)]),
            Verdict::Send(RangeRequest::Whole)
        );
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(eval(&[("if-modified-since", DATE)]), Verdict::NotModified);
        assert_eq!(eval(&[("if-modified-since", "Wed, 15 Nov 2023 00:00:00 GMT")]), Verdict::NotModified);
        let earlier = "Tue, 14 Nov 2023 22:13:19 GMT";
        assert_eq!(eval(&[("if-modified-since", earlier)]), Verdict::Send(RangeRequest::Whole));
        assert_eq!(eval(&[("if-modified-since", "yesterday")]), Verdict::Send(RangeRequest::Whole));
    }

    #[test]
    fn if_range() {
        let part = Verdict::Send(RangeRequest::Partial { start: 0, end: 9 });
        let whole = Verdict::Send(RangeRequest::Whole);
        assert_eq!(eval(&[("range", "bytes=0-9")]), part);
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", TAG)]), part);
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", "\"other\"")]), whole);
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", "W/\"3e8-17-2a\"")]), whole, "weak never matches");
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", "\"3e8-17-2a\", \"x\"")]), whole, "one tag only");
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", DATE)]), part);
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", "Tue, 14 Nov 2023 22:13:21 GMT")]), whole);
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", "garbage")]), whole);
        assert_eq!(eval(&[("if-range", TAG)]), whole, "If-Range without Range is ignored");
        // A date equal to a Last-Modified that is not yet a second old is weak.
        let fresh = evaluate(
            &[(RANGE, HeaderValue::from_static("bytes=0-9")), (IF_RANGE, HeaderValue::from_static(DATE))]
                .into_iter()
                .collect(),
            &meta(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_900),
        );
        assert_eq!(fresh, whole);
    }

    #[test]
    fn entity_tag_lists() {
        let tags: Vec<_> = EntityTags(" \"a\" ,W/\"b\",, \"c,d\"").collect();
        assert_eq!(tags, [(false, "a"), (true, "b"), (false, "c,d")]);
        assert_eq!(EntityTags("\"a\" junk \"b\"").collect::<Vec<_>>(), [(false, "a")]);
        assert_eq!(EntityTags("").count(), 0);
    }
}
