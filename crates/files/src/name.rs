//! Client-supplied file names.
//!
//! Every name that reaches the disk goes through [`SafeName::parse`], so the
//! rules that keep a client inside the served root live in exactly one place.

use std::fmt;

/// Default bound on a whole name; well under Linux's `PATH_MAX` once joined
/// to a root, and small enough to quote in error messages.
pub const DEFAULT_MAX_NAME_BYTES: usize = 1024;
/// Linux `NAME_MAX`: longer components would fail at the syscall anyway,
/// rejecting them here gives the client a clear message instead of EIO-ish noise.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Top-level names starting with this are reserved for the server's own state
/// (upload staging, metadata), so clients can neither read nor overwrite them.
pub const RESERVED_PREFIX: &str = ".ferry";

/// Why a client-supplied name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes, limit is {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("name contains a NUL byte")]
    Nul,
    #[error("name contains a control character (0x{0:02x})")]
    Control(u32),
    #[error("name contains a backslash: {0:?}")]
    Backslash(String),
    #[error("name is absolute: {0:?}")]
    Absolute(String),
    #[error("name contains an empty component: {0:?}")]
    EmptyComponent(String),
    #[error("name contains a \".\" component: {0:?}")]
    Dot(String),
    #[error("name contains a \"..\" component: {0:?}")]
    DotDot(String),
    #[error("name has a {len}-byte component, limit is {MAX_COMPONENT_BYTES}: {name:?}")]
    ComponentTooLong { len: usize, name: String },
    #[error("name uses the reserved {RESERVED_PREFIX:?} prefix: {0:?}")]
    Reserved(String),
}

/// A validated relative name: '/'-separated components, none empty, `.`,
/// `..`, or containing control characters or backslashes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeName(String);

impl SafeName {
    /// Validates `s`; `max_bytes` bounds the whole name.
    pub fn parse(s: &str, max_bytes: usize) -> Result<SafeName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        // Length first, so later messages can safely quote the name.
        if s.len() > max_bytes {
            return Err(NameError::TooLong { len: s.len(), limit: max_bytes });
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(if c == '\0' { NameError::Nul } else { NameError::Control(c.into()) });
        }
        if s.contains('\\') {
            return Err(NameError::Backslash(s.to_owned()));
        }
        if s.starts_with('/') {
            return Err(NameError::Absolute(s.to_owned()));
        }
        for c in s.split('/') {
            match c {
                "" => return Err(NameError::EmptyComponent(s.to_owned())),
                "." => return Err(NameError::Dot(s.to_owned())),
                ".." => return Err(NameError::DotDot(s.to_owned())),
                c if c.len() > MAX_COMPONENT_BYTES => {
                    return Err(NameError::ComponentTooLong { len: c.len(), name: s.to_owned() });
                }
                _ => {}
            }
        }
        if s.starts_with(RESERVED_PREFIX) {
            return Err(NameError::Reserved(s.to_owned()));
        }
        Ok(SafeName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    fn parse(s: &str) -> Result<SafeName, NameError> {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES)
    }

    #[test]
    fn accepts_ordinary_names() {
        for s in ["a", "a.txt", "dir/sub/file.tar.gz", "..a", "a..", ".hidden", "é/ü", "a b"] {
            let n = parse(s).unwrap();
            assert_eq!(n.as_str(), s);
            assert_eq!(n.to_string(), s);
        }
        assert_eq!(parse("x/y/z").unwrap().components().collect::<Vec<_>>(), ["x", "y", "z"]);
    }

    #[test]
    fn rejects_each_rule() {
        assert_eq!(parse(""), Err(NameError::Empty));
        assert_eq!(SafeName::parse(&"a".repeat(2000), 1024), Err(NameError::TooLong { len: 2000, limit: 1024 }));
        assert!(matches!(parse("/etc/passwd"), Err(NameError::Absolute(_))));
        assert!(matches!(parse("a//b"), Err(NameError::EmptyComponent(_))));
        assert!(matches!(parse("a/"), Err(NameError::EmptyComponent(_))));
        assert!(matches!(parse("./a"), Err(NameError::Dot(_))));
        assert!(matches!(parse("a/."), Err(NameError::Dot(_))));
        for s in ["..", "../x", "a/../../x", "a/.."] {
            assert!(matches!(parse(s), Err(NameError::DotDot(_))), "{s}");
        }
        assert_eq!(parse("a\0b"), Err(NameError::Nul));
        assert_eq!(parse("a\nb"), Err(NameError::Control(0x0a)));
        assert_eq!(parse("a\x7fb"), Err(NameError::Control(0x7f)));
        assert!(matches!(parse("a\\b"), Err(NameError::Backslash(_))));
        let long = format!("d/{}", "x".repeat(256));
        assert!(matches!(parse(&long), Err(NameError::ComponentTooLong { len: 256, .. })));
        assert!(parse(&"x".repeat(255)).is_ok());
        assert!(matches!(parse(".ferry-uploads/x"), Err(NameError::Reserved(_))));
        assert!(parse("a/.ferry").is_ok(), "only the top level is reserved");
    }

    #[test]
    fn messages_are_one_line_and_quoted() {
        assert_eq!(parse("/etc/passwd").unwrap_err().to_string(), r#"name is absolute: "/etc/passwd""#);
        assert_eq!(parse("a/../../x").unwrap_err().to_string(), r#"name contains a ".." component: "a/../../x""#);
        assert_eq!(parse("a\nb").unwrap_err().to_string(), "name contains a control character (0x0a)");
        assert_eq!(
            SafeName::parse(&"a".repeat(2000), 1024).unwrap_err().to_string(),
            "name is 2000 bytes, limit is 1024"
        );
    }

    proptest! {
        #[test]
        fn parsed_names_stay_under_root(s in "[a./\\\\\\x00\\n]{0,12}|\\PC{0,40}") {
            if let Ok(n) = parse(&s) {
                let root = Path::new("/srv/root");
                let joined = root.join(n.as_str());
                prop_assert!(joined.starts_with(root));
                prop_assert!(joined.components().skip(root.components().count())
                    .all(|c| matches!(c, Component::Normal(_))));
                prop_assert!(n.components().all(|c| !c.is_empty() && c != "." && c != ".."));
            }
        }
    }
}
