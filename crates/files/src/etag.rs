//! Cheap validators for stored files.

use std::fmt;
use std::os::unix::fs::MetadataExt;

/// Bound on an etag a client may send back (ours are at most 50 bytes).
const MAX_ETAG_BYTES: usize = 64;

/// Identifies one version of a file without reading it: size, mtime in
/// nanoseconds and inode. A replace-by-rename changes the inode, so even a
/// same-size, same-second rewrite gets a new etag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Etag(String);

impl Etag {
    pub fn from_metadata(m: &std::fs::Metadata) -> Etag {
        let nanos = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        // Truncation is fine: this is an identifier, not a timestamp, and it
        // keeps pre-1970 or far-future mtimes within 16 hex digits.
        Etag(format!("{:x}-{:x}-{:x}", m.size(), nanos as u64, m.ino()))
    }

    /// Accepts a client-supplied etag only if it could be one of ours in shape.
    pub fn parse(s: &str) -> Option<Etag> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ETAG_BYTES
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'));
        ok.then(|| Etag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file size an etag of ours records in its first field, for
    /// accounting a cache miss before the file is read. `None` for etags
    /// not in our `size-mtime-inode` shape.
    pub fn size_hint(&self) -> Option<u64> {
        let mut fields = self.0.split('-');
        let size = fields.next()?;
        if fields.count() != 2 || size.is_empty() || size.len() > 16 {
            return None;
        }
        u64::from_str_radix(size, 16).ok()
    }
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let a = Etag::from_metadata(&std::fs::metadata(&p).unwrap());
        assert_eq!(Etag::parse(a.as_str()), Some(a.clone()));
        assert!(a.as_str().starts_with("3-"));
        assert_eq!(a.size_hint(), Some(3));

        let q = dir.path().join("g");
        std::fs::write(&q, b"two").unwrap();
        std::fs::rename(&q, &p).unwrap();
        let b = Etag::from_metadata(&std::fs::metadata(&p).unwrap());
        assert_ne!(a, b, "replacement has a new inode");
    }

    #[test]
    fn parse_rejects_foreign_shapes() {
        assert_eq!(Etag::parse(""), None);
        assert_eq!(Etag::parse("\"3-abc-1\""), None);
        assert_eq!(Etag::parse("3-ABC-1"), None);
        assert_eq!(Etag::parse(&"a".repeat(65)), None);
        assert!(Etag::parse(&"a".repeat(64)).is_some());
        assert_eq!(Etag::parse("ff-1-2").unwrap().size_hint(), Some(255));
        for odd in ["1-2", "1-2-3-4", "-1-2", &format!("{}-1-2", "f".repeat(17)), "abcdef"] {
            assert_eq!(Etag::parse(odd).unwrap().size_hint(), None, "{odd}");
        }
        assert_eq!(serde_json::to_string(&Etag::parse("1-2-3").unwrap()).unwrap(), "\"1-2-3\"");
    }
}
