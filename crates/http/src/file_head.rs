//! The header values that describe one version of a file: `ETag`,
//! `Last-Modified`, `Content-Type` and the whole file's `Content-Length`.
//!
//! Making them (a quoted etag, an HTTP date, a mime lookup by extension) was
//! a good part of the work of a small answer, so they are made once per
//! version, when the name is checked, and shared by every answer about that
//! version until the next check ([`crate::resolved_names`]).

use axum::http::HeaderValue;
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
}

impl FileHead {
    pub fn new(name: &SafeName, meta: &FileMeta) -> FileHead {
        let mime = mime_guess::from_path(name.as_str()).first_or_octet_stream();
        FileHead {
            etag: meta.etag.clone(),
            etag_value: header_value(&conditional::etag_header(&meta.etag)),
            last_modified: header_value(&conditional::last_modified_header(meta)),
            content_type: header_value(mime.as_ref()),
            length: HeaderValue::from(meta.size),
        }
    }
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
        let other = SafeName::parse("blob.unknownext", DEFAULT_MAX_NAME_BYTES).unwrap();
        assert_eq!(FileHead::new(&other, &meta).content_type, "application/octet-stream");
    }
}
