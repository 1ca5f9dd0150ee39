//! The header values that describe one version of a file: `ETag`,
//! `Last-Modified`, `Content-Type` and the whole file's `Content-Length`.
//!
//! Making them (a quoted etag, an HTTP date, a mime lookup by extension) was
//! a good part of the work of a small answer, so they are made once per
//! version, when the name is checked, and shared by every answer about that
//! version until the next check ([`crate::resolved_names`]).
//!
//! The whole header block of a 200 for the whole file is built once too:
//! filling a fresh header map (a hash per header name) was about a tenth of
//! the gateway's own instructions per cached answer, and cloning a built map
//! costs a fraction of that.
//!
//! For the plain lane ([`crate::plain_lane`]), which answers without hyper,
//! the same 200 is also kept as the bytes hyper would write for it: status
//! line and header lines, up to where hyper adds `date`.

use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, LAST_MODIFIED,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use ferry_files::{Etag, FileMeta, SafeName};

use crate::conditional;

#[derive(Debug)]
pub struct FileHead {
    /// The version the values describe.
    pub etag: Etag,
    /// `etag` as a strong entity-tag.
    pub etag_value: HeaderValue,
    pub last_modified: HeaderValue,
    /// Guessed from the name's extension; `application/octet-stream` if unknown.
    pub content_type: HeaderValue,
    /// The size of the whole file, for a 200.
    pub length: HeaderValue,
    /// Every header of a 200 (or its HEAD) for the whole file.
    pub whole: HeaderMap,
    /// `whole` as hyper encodes it: `HTTP/1.1 200 OK` and one lowercase
    /// `name: value` line per header, each ending in CRLF; no `date`, no
    /// blank line.
    pub whole_block: Bytes,
}

impl FileHead {
    pub fn new(name: &SafeName, meta: &FileMeta) -> FileHead {
        let mime = mime_guess::from_path(name.as_str()).first_or_octet_stream();
        let etag_value = header_value(&conditional::etag_header(&meta.etag));
        let last_modified = header_value(&conditional::last_modified_header(meta));
        let content_type = header_value(mime.as_ref());
        let length = HeaderValue::from(meta.size);
        let mut whole = HeaderMap::with_capacity(WHOLE_HEADERS);
        validators(&mut whole, &etag_value, &last_modified);
        whole.insert(CONTENT_TYPE, content_type.clone());
        whole.insert(CONTENT_LENGTH, length.clone());
        content_guards(&mut whole);
        assert_eq!(whole.len(), WHOLE_HEADERS, "the whole-file header block");
        let whole_block = encode_ok(&whole);
        FileHead { etag: meta.etag.clone(), etag_value, last_modified, content_type, length, whole, whole_block }
    }
}

/// A 200's status line and header lines, as hyper writes them (names are
/// lowercase in a [`HeaderMap`], in insertion order).
fn encode_ok(headers: &HeaderMap) -> Bytes {
    let mut out = Vec::with_capacity(STATUS_LINE_OK.len() + 64 * headers.len());
    out.extend_from_slice(STATUS_LINE_OK);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Bytes::from(out)
}

/// hyper's status line for an HTTP/1.1 200.
const STATUS_LINE_OK: &[u8] = b"HTTP/1.1 200 OK\r\n";

/// Headers in [`FileHead::whole`].
const WHOLE_HEADERS: usize = 8;

/// The headers every answer about a file carries.
pub fn validators(h: &mut HeaderMap, etag: &HeaderValue, last_modified: &HeaderValue) {
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(ETAG, etag.clone());
    h.insert(LAST_MODIFIED, last_modified.clone());
    // Revalidate every time: the etag makes that a cheap 304.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// Files are client-supplied: never let a browser sniff them into HTML, and
/// run any HTML served from here in an opaque origin, away from the
/// dashboard's.
pub fn content_guards(h: &mut HeaderMap) {
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
}

/// Our own values (quoted hex etags, HTTP dates, numbers, mime types) are
/// always valid header values; an empty one would only drop the header.
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_files::DEFAULT_MAX_NAME_BYTES;

    #[test]
    fn values_of_one_version() {
        let etag = Etag::parse("400-1879a8c2b1e0c5a0-2a1b").unwrap();
        let meta = FileMeta { size: 1024, etag: etag.clone(), modified_unix_ms: 784_111_777_123 };
        let name = SafeName::parse("dir/page.html", DEFAULT_MAX_NAME_BYTES).unwrap();
        let head = FileHead::new(&name, &meta);
        assert_eq!(head.etag, etag);
        assert_eq!(head.etag_value, "\"400-1879a8c2b1e0c5a0-2a1b\"");
        assert_eq!(head.last_modified, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(head.content_type, "text/html");
        assert_eq!(head.length, "1024");
        let whole: Vec<(String, &str)> = head.whole.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap())).collect();
        assert_eq!(
            whole,
            [
                ("accept-ranges".to_owned(), "bytes"),
                ("etag".to_owned(), "\"400-1879a8c2b1e0c5a0-2a1b\""),
                ("last-modified".to_owned(), "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("cache-control".to_owned(), "no-cache"),
                ("content-type".to_owned(), "text/html"),
                ("content-length".to_owned(), "1024"),
                ("x-content-type-options".to_owned(), "nosniff"),
                ("content-security-policy".to_owned(), "sandbox"),
            ]
        );
        let block = String::from_utf8(head.whole_block.to_vec()).unwrap();
        let mut lines = block.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
        for (name, value) in &whole {
            assert_eq!(lines.next(), Some(format!("{name}: {value}").as_str()));
        }
        assert_eq!(lines.next(), Some(""), "every line ends in CRLF, and nothing follows");
        assert_eq!(lines.next(), None);
        let other = SafeName::parse("blob.unknownext", DEFAULT_MAX_NAME_BYTES).unwrap();
        assert_eq!(FileHead::new(&other, &meta).content_type, "application/octet-stream");
    }
}
