//! From a request path to a store name.
//!
//! The path is percent-decoded exactly once and the result must pass
//! [`SafeName`]: so `%2e%2e` is `..` and refused, while `%252e%252e` is the
//! literal name `%2e%2e` (which at worst is not found). Symlinks that lead
//! out of the root are the store's business ([`ferry_files::FileStore::resolve`]).

use ferry_files::{DEFAULT_MAX_NAME_BYTES, NameError, SafeName};
use percent_encoding::percent_decode_str;

/// Where file names start in a request path.
pub const FILES_PREFIX: &str = "/files/";

/// Why a request path names no file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("not a {FILES_PREFIX} path")]
    NotUnderFiles,
    #[error("name is not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error(transparent)]
    Name(NameError),
}

/// The store name a `/files/...` request path (without query) refers to.
pub fn name_from_path(path: &str) -> Result<SafeName, BadPath> {
    let raw = path.strip_prefix(FILES_PREFIX).ok_or(BadPath::NotUnderFiles)?;
    let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| BadPath::NotUtf8)?;
    SafeName::parse(&decoded, DEFAULT_MAX_NAME_BYTES).map_err(BadPath::Name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        name_from_path(p).unwrap().as_str().to_owned()
    }

    fn err(p: &str) -> BadPath {
        name_from_path(p).unwrap_err()
    }

    #[test]
    fn decodes_once() {
        assert_eq!(ok("/files/a.txt"), "a.txt");
        assert_eq!(ok("/files/dir/sub/b%20c.txt"), "dir/sub/b c.txt");
        assert_eq!(ok("/files/%C3%A9t%C3%A9"), "été");
        assert_eq!(ok("/files/%252e%252e"), "%2e%2e", "a second encoding layer stays literal");
        assert_eq!(ok("/files/a%2fb"), "a/b", "an encoded slash is a slash, still checked as a name");
        assert_eq!(ok("/files/100%"), "100%", "a stray percent is literal");
    }

    #[test]
    fn refuses_escapes_and_tricks() {
        for p in [
            "/files/..",
            "/files/../etc/passwd",
            "/files/a/../../x",
            "/files/%2e%2e",
            "/files/%2E%2E/x",
            "/files/a/%2e%2e/%2e%2e/x",
            "/files/.%2e/x",
        ] {
            assert!(matches!(err(p), BadPath::Name(NameError::DotDot(_))), "{p}");
        }
        assert!(matches!(err("/files//etc/passwd"), BadPath::Name(NameError::Absolute(_))));
        assert!(matches!(err("/files/%2fetc%2fpasswd"), BadPath::Name(NameError::Absolute(_))));
        assert!(matches!(err("/files/a//b"), BadPath::Name(NameError::EmptyComponent(_))));
        assert!(matches!(err("/files/a%00b"), BadPath::Name(NameError::Nul)));
        assert!(matches!(err("/files/..%5c..%5cx"), BadPath::Name(NameError::Backslash(_))));
        assert!(matches!(err("/files/a\\b"), BadPath::Name(NameError::Backslash(_))));
        assert!(matches!(err("/files/./a"), BadPath::Name(NameError::Dot(_))));
        assert!(matches!(err("/files/"), BadPath::Name(NameError::Empty)));
        assert!(matches!(err("/files/.ferry-uploads/x"), BadPath::Name(NameError::Reserved(_))));
        assert!(matches!(err("/files/%0a"), BadPath::Name(NameError::Control(0x0a))));
        assert_eq!(err("/files/%ff"), BadPath::NotUtf8);
        assert_eq!(err("/other/a"), BadPath::NotUnderFiles);
        let long = format!("/files/{}", "a".repeat(2000));
        assert!(matches!(err(&long), BadPath::Name(NameError::TooLong { .. })));
    }
}
