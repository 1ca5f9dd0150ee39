//! The client's own metadata: what is on its disk, and what it last had in common with the server.
//!
//! The seed's client keeps "its own META-DATA file" and compares it with the server's on connect. To
//! tell "I changed this" from "the server changed this" without trusting clocks, ferry's client records
//! per file, besides the file's current size, mtime and md5, the md5 it had when it last matched the
//! server (and that version's number once it learns it from a META-DATA; the seed's messages carry no
//! versions). A file deleted locally keeps its entry, with no current file, until the delete has
//! reached the server.

use std::collections::BTreeMap;

use ferry_files::SafeName;

use crate::Md5Sum;

/// A file as it is on the client's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub md5: Md5Sum,
}

/// The server's version of a file that the client's copy last matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub md5: Md5Sum,
    /// The server's version number, once a META-DATA has told it.
    pub version: Option<u64>,
}

/// What the client knows of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEntry {
    /// The file on disk now; `None` if the client saw it deleted.
    pub current: Option<LocalFile>,
    /// Its last common version with the server; `None` if it never had one (created here).
    pub synced: Option<Synced>,
}

/// The client's metadata: every file it knows, by name.
pub type LocalMetadata = BTreeMap<SafeName, LocalEntry>;

impl LocalFile {
    /// Recorded before it was digested (md5 all zeros): a large new file whose upload digests it
    /// (`Shared::refresh` in the client). It counts as a local change until the upload's md5 replaces
    /// the zeros; a reconnect digests it first.
    pub fn is_undigested(&self) -> bool {
        self.md5 == Md5Sum::ZERO
    }
}

impl LocalEntry {
    /// A file created here that the server has not seen yet.
    pub fn new_local(file: LocalFile) -> LocalEntry {
        LocalEntry { current: Some(file), synced: None }
    }

    /// A file just received from the server, or just accepted by it.
    pub fn in_sync(file: LocalFile, version: Option<u64>) -> LocalEntry {
        LocalEntry { current: Some(file), synced: Some(Synced { md5: file.md5, version }) }
    }

    /// Whether the file on disk holds content the server has not got from this client: it changed
    /// since the last sync, or was never synced.
    pub fn is_modified(&self) -> bool {
        match (self.current, self.synced) {
            (Some(file), Some(synced)) => file.md5 != synced.md5,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Whether the client deleted a file the server had.
    pub fn is_deleted_locally(&self) -> bool {
        self.current.is_none() && self.synced.is_some()
    }

    /// Whether taking the server's version (of whole-file md5 `incoming`) would destroy a local edit, so
    /// the local file must first be kept as a conflicted copy. This is the seed's "overwriting any local
    /// copy … even if it has been updated in the interim", made safe, for pushes as they arrive.
    pub fn needs_conflicted_copy(&self, incoming: Md5Sum) -> bool {
        self.is_modified() && self.current.is_some_and(|f| f.md5 != incoming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8]) -> LocalFile {
        LocalFile { size: content.len() as u64, mtime_ns: 1, md5: Md5Sum::of(content) }
    }

    #[test]
    fn modified_means_content_the_server_lacks() {
        assert!(LocalEntry::new_local(file(b"a")).is_modified());
        let synced = LocalEntry::in_sync(file(b"a"), Some(3));
        assert!(!synced.is_modified());
        let edited = LocalEntry { current: Some(file(b"b")), ..synced };
        assert!(edited.is_modified());
        // Same content with another mtime is not a change.
        let touched = LocalEntry { current: Some(LocalFile { mtime_ns: 99, ..file(b"a") }), ..synced };
        assert!(!touched.is_modified());
        let deleted = LocalEntry { current: None, ..synced };
        assert!(!deleted.is_modified());
        assert!(deleted.is_deleted_locally());
        assert!(!LocalEntry { current: None, synced: None }.is_deleted_locally());
    }

    #[test]
    fn a_push_over_a_local_edit_needs_a_conflicted_copy() {
        let synced = LocalEntry::in_sync(file(b"a"), None);
        assert!(!synced.needs_conflicted_copy(Md5Sum::of(b"server")), "unedited: just take the server's");
        let edited = LocalEntry { current: Some(file(b"mine")), ..synced };
        assert!(edited.needs_conflicted_copy(Md5Sum::of(b"server")));
        assert!(!edited.needs_conflicted_copy(Md5Sum::of(b"mine")), "same content: nothing to keep");
        assert!(LocalEntry::new_local(file(b"mine")).needs_conflicted_copy(Md5Sum::of(b"server")));
        assert!(!LocalEntry { current: None, ..synced }.needs_conflicted_copy(Md5Sum::of(b"server")));
    }
}
