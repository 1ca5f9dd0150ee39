//! Recognizes the one request the plain lane answers itself
//! ([`crate::plain_lane`]): an HTTP/1.1 `GET` or `HEAD` of `/files/<path>`
//! with nothing that could change the answer from a whole-file 200.
//!
//! Anything else — another method or version, a query, a conditional or
//! range header, a body, `Expect`, `Upgrade`, a `Connection` other than
//! `keep-alive`, a head too large, malformed or not yet complete — is not
//! recognized, and hyper reads it from the start, with its own limits and
//! its own error answers. So this parser never has to answer bad input: it
//! only has to be sure of what it accepts.

use crate::path::FILES_PREFIX;

/// Headers one plain request may carry; a request with more goes to hyper.
pub const MAX_PLAIN_HEADERS: usize = 32;

/// A plain `GET` or `HEAD`, complete in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainRequest<'a> {
    /// Bytes of the request (its head; it has no body).
    pub len: usize,
    pub head: bool,
    /// The request target: `/files/...`, no query.
    pub path: &'a str,
}

/// The plain request at the start of `buf`, if that is what it is and its
/// head fits `max_head_bytes`.
pub fn parse_plain(buf: &[u8], max_head_bytes: usize) -> Option<PlainRequest<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PLAIN_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) | Err(_) => return None,
    };
    if len > max_head_bytes || req.version != Some(1) {
        return None;
    }
    let head = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let path = req.path?;
    if !path.starts_with(FILES_PREFIX) || !path.bytes().all(is_plain_path_byte) {
        return None;
    }
    if !req.headers.iter().all(|h| is_plain_header(h.name, h.value)) {
        return None;
    }
    Some(PlainRequest { len, head, path })
}

/// Path bytes whose meaning is the same to hyper's URI parser and to
/// [`crate::path::name_from_path`]: unreserved, sub-delims, `:`, `@`, `/`
/// and percent escapes. No `?` (a query) or `#`.
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
}

/// Whether a request header leaves the answer a plain whole-file 200 on a
/// kept-alive connection.
fn is_plain_header(name: &str, value: &[u8]) -> bool {
    const NOT_PLAIN: [&str; 6] = ["range", "content-length", "transfer-encoding", "expect", "upgrade", "te"];
    if name.len() >= 3 && name[..3].eq_ignore_ascii_case("if-") {
        return false;
    }
    if name.eq_ignore_ascii_case("connection") {
        return value.eq_ignore_ascii_case(b"keep-alive");
    }
    !NOT_PLAIN.iter().any(|n| name.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 << 10;

    fn plain(req: &str) -> Option<(bool, &str)> {
        parse_plain(req.as_bytes(), MAX).map(|p| {
            assert_eq!(p.len, req.len());
            (p.head, p.path)
        })
    }

    #[test]
    fn plain_gets_and_heads_are_recognized() {
        assert_eq!(plain("GET /files/a.bin HTTP/1.1\r\nHost: x\r\n\r\n"), Some((false, "/files/a.bin")));
        assert_eq!(plain("HEAD /files/d/%61 HTTP/1.1\r\nhost: x\r\nAccept: */*\r\n\r\n"), Some((true, "/files/d/%61")));
        assert_eq!(plain("GET /files/a HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n"), Some((false, "/files/a")));
        assert_eq!(plain("GET /files/ HTTP/1.1\r\n\r\n"), Some((false, "/files/")), "refused by the handler");
        assert_eq!(plain("GET /files/.. HTTP/1.1\r\n\r\n"), Some((false, "/files/..")), "refused by the handler");
    }

    #[test]
    fn the_request_length_leaves_the_next_request_in_the_buffer() {
        let two = b"GET /files/a HTTP/1.1\r\n\r\nGET /files/b HTTP/1.1\r\n\r\n";
        let first = parse_plain(two, MAX).unwrap();
        assert_eq!(first.len, two.len() / 2);
        assert_eq!(parse_plain(&two[first.len..], MAX).unwrap().path, "/files/b");
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for req in [
            "GET /files/a HTTP/1.1\r\nHost: x\r\n",
            "GET /files/a HTTP/1.1\r\n",
            "GET /files/a HTTP/1.0\r\n\r\n",
            "POST /files/a HTTP/1.1\r\n\r\n",
            "PUT /files/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            "get /files/a HTTP/1.1\r\n\r\n",
            "GET /api/files HTTP/1.1\r\n\r\n",
            "GET /files HTTP/1.1\r\n\r\n",
            "GET /files/a?x=1 HTTP/1.1\r\n\r\n",
            "GET /files/a\"b HTTP/1.1\r\n\r\n",
            "GET http://x/files/a HTTP/1.1\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nif-modified-since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nIF-RANGE: \"x\"\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /files/a HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET  /files/a HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_plain(req.as_bytes(), MAX), None, "{req:?}");
        }
        let many: String = (0..=MAX_PLAIN_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        assert_eq!(plain(&format!("GET /files/a HTTP/1.1\r\n{many}\r\n")), None, "too many headers");
        let req = "GET /files/a HTTP/1.1\r\nx: yyyyyyyy\r\n\r\n";
        assert!(parse_plain(req.as_bytes(), req.len()).is_some());
        assert_eq!(parse_plain(req.as_bytes(), req.len() - 1), None, "a head over the bound");
    }
}
