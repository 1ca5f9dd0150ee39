//! The catch-up diff: which stored files a node must receive and which of
//! its files it must delete, from the store's listing and what the node
//! holds.
//!
//! Etags make the common case free: a node that received a file from this
//! server recorded the etag of the version it got, and an equal etag means
//! the same version. Only a file whose etag is unknown or different but
//! whose size matches needs its BLAKE3 compared, which the feed does when
//! it reaches that file ([`Check::Compare`]).

use std::collections::{BTreeMap, BTreeSet};

use ferry_files::FileEntry;

use super::held::Held;

/// What to do about one stored file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The node lacks it or holds a different size: send it.
    Send,
    /// Same size, version unknown: compare digests, send if they differ.
    Compare,
}

/// Work for one node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Stored files the node may lack, with their size.
    pub files: BTreeMap<String, (Check, u64)>,
    /// Names the node holds that the store no longer has.
    pub delete: BTreeSet<String>,
}

impl Plan {
    /// Work left: files, and bytes that would be sent.
    pub fn lag(&self) -> (u64, u64) {
        let bytes = self.files.values().map(|(_, size)| size).sum();
        ((self.files.len() + self.delete.len()) as u64, bytes)
    }
}

/// Compares the store's listing with what the node holds.
pub fn plan(store: &[FileEntry], held: &BTreeMap<String, Held>) -> Plan {
    let mut out = Plan::default();
    for entry in store {
        let check = match held.get(&entry.name) {
            None => Some(Check::Send),
            Some(h) if h.size != entry.size => Some(Check::Send),
            Some(h) if h.etag.as_deref() == Some(entry.etag.as_str()) => None,
            Some(_) => Some(Check::Compare),
        };
        if let Some(check) = check {
            out.files.insert(entry.name.clone(), (check, entry.size));
        }
    }
    let stored: BTreeSet<&str> = store.iter().map(|e| e.name.as_str()).collect();
    out.delete = held.keys().filter(|name| !stored.contains(name.as_str())).cloned().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_files::Etag;

    fn entry(name: &str, size: u64, etag: &str) -> FileEntry {
        FileEntry { name: name.into(), size, etag: Etag::parse(etag).unwrap(), modified_unix_ms: 0 }
    }

    fn held(size: u64, etag: Option<&str>) -> Held {
        Held { size, blake3: blake3::hash(b"").to_hex().to_string(), etag: etag.map(str::to_string) }
    }

    #[test]
    fn every_case_of_the_diff() {
        let store = [
            entry("missing", 10, "a-1-1"),
            entry("same", 20, "14-2-2"),
            entry("resized", 30, "1e-3-3"),
            entry("replaced", 40, "28-4-4"),
            entry("unknown", 50, "32-5-5"),
        ];
        let mut node = BTreeMap::new();
        node.insert("same".to_string(), held(20, Some("14-2-2")));
        node.insert("resized".to_string(), held(31, Some("1e-3-3")));
        node.insert("replaced".to_string(), held(40, Some("28-4-0")));
        node.insert("unknown".to_string(), held(50, None));
        node.insert("gone".to_string(), held(1, Some("1-1-1")));
        node.insert("dir/gone too".to_string(), held(1, None));

        let plan = plan(&store, &node);
        let files: Vec<_> = plan.files.iter().map(|(n, (c, s))| (n.as_str(), *c, *s)).collect();
        assert_eq!(
            files,
            [
                ("missing", Check::Send, 10),
                ("replaced", Check::Compare, 40),
                ("resized", Check::Send, 30),
                ("unknown", Check::Compare, 50),
            ]
        );
        assert_eq!(plan.delete.iter().map(String::as_str).collect::<Vec<_>>(), ["dir/gone too", "gone"]);
        assert_eq!(plan.lag(), (6, 130));
    }

    #[test]
    fn in_sync_node_has_no_work() {
        let store = [entry("a", 1, "1-1-1"), entry("b/c", 2, "2-2-2")];
        let node: BTreeMap<_, _> =
            [("a".to_string(), held(1, Some("1-1-1"))), ("b/c".to_string(), held(2, Some("2-2-2")))].into();
        assert_eq!(plan(&store, &node), Plan::default());
        assert_eq!(plan(&[], &BTreeMap::new()).lag(), (0, 0));
    }
}
