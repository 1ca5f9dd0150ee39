//! The server's roster: every file it knows, its committed state, and who holds its lock.
//!
//! The seed's policy, as typed results: the first client to update a file locks it, and any other
//! client that tries to update or delete it meanwhile is refused with "Abort - File Locked"; deleting a
//! file the server does not have is "No file to delete". A lock here is a lease: it belongs to a client
//! id, ends when its holder commits or gives up, and [`Roster::release_all`] ends all of a client's
//! leases when it disconnects, so a client that vanishes mid-upload leaves no file locked.
//!
//! Deletes take a lease too, so that removing the file from disk and recording the tombstone happen
//! with nobody else writing that file. Versions come from one roster-wide counter: every commit, of any
//! file, gets the next number, so comparing two versions of a file never depends on clocks and a
//! deleted-then-recreated file never reuses a number.
//!
//! The roster is bounded by the META-DATA limits (entries and bytes), so its snapshot always fits in
//! one META-DATA message. When full, it forgets its oldest tombstone to make room (the worst that does
//! is let a client that was away for long upload a file again that others deleted: nothing is lost).
//! The server keeps the roster behind a mutex; nothing here blocks or does I/O.

use std::collections::BTreeMap;

use ferry_files::SafeName;

use crate::wire::metadata::entry_len;
use crate::{ClientId, EntryState, Limits, Md5Sum, MetaEntry, Metadata, StatusCode};

/// What a lease lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    Update,
    Delete,
}

/// A lock on one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: ClientId,
    pub kind: LeaseKind,
}

/// Why the roster refused a lease: the seed's outcomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("file is locked by client {holder}")]
    FileLocked { holder: ClientId },
    #[error("no file to delete")]
    NoFileToDelete,
    #[error("the roster is full ({max_entries} entries or {max_bytes} bytes of META-DATA)")]
    Full { max_entries: usize, max_bytes: usize },
}

impl Refusal {
    /// The status code the server answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::FileLocked { .. } => StatusCode::FileLocked,
            Refusal::NoFileToDelete => StatusCode::NoFileToDelete,
            // The seed's answer for a file the receiver cannot take.
            Refusal::Full { .. } => StatusCode::FileInUse,
        }
    }
}

/// A commit or release by a client that does not hold the lease it needs: a bug in the caller, reported
/// rather than acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client {client} holds no {kind:?} lease on {name}")]
pub struct LeaseError {
    pub name: SafeName,
    pub client: ClientId,
    pub kind: LeaseKind,
}

/// A saved roster that does not fit the limits or contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("metadata holds {count} entries, limit is {max}")]
    TooManyEntries { count: usize, max: usize },
    #[error("metadata is {len} bytes, limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("entry {name} has version {version}, above the last version {last}")]
    VersionAboveLast { name: SafeName, version: u64, last: u64 },
}

#[derive(Debug, Clone)]
struct Slot {
    /// `None` while the first upload of a new file is in progress.
    committed: Option<MetaEntry>,
    lease: Option<Lease>,
}

/// Every file the server knows, with its lock.
#[derive(Debug, Clone)]
pub struct Roster {
    slots: BTreeMap<SafeName, Slot>,
    last_version: u64,
    /// META-DATA body bytes of all slots (pending ones included, so committing never overflows).
    body_bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Roster {
    /// An empty roster bounded by `limits`' META-DATA limits.
    pub fn new(limits: &Limits) -> Roster {
        Roster {
            slots: BTreeMap::new(),
            last_version: 0,
            body_bytes: 0,
            max_entries: limits.max_metadata_entries as usize,
            max_bytes: limits.max_metadata_bytes as usize,
        }
    }

    /// The roster a saved META-DATA describes (the server's metadata file, read at start).
    pub fn from_metadata(metadata: Metadata, limits: &Limits) -> Result<Roster, RosterError> {
        let mut roster = Roster::new(limits);
        let count = metadata.entries.len();
        if count > roster.max_entries {
            return Err(RosterError::TooManyEntries { count, max: roster.max_entries });
        }
        let len = metadata.body_len();
        if len > roster.max_bytes {
            return Err(RosterError::TooLarge { len, max: roster.max_bytes });
        }
        let last = metadata.last_version;
        if let Some((name, e)) = metadata.entries.iter().find(|(_, e)| e.version > last) {
            return Err(RosterError::VersionAboveLast { name: name.clone(), version: e.version, last });
        }
        roster.last_version = last;
        roster.body_bytes = len;
        roster.slots =
            metadata.entries.into_iter().map(|(n, e)| (n, Slot { committed: Some(e), lease: None })).collect();
        roster.assert_consistent();
        Ok(roster)
    }

    /// Takes the lock on `name` for `client`. Holding it already (same client, same kind) is fine.
    ///
    /// Update: refused only if someone else holds the lock (or the roster is full); a file the roster
    /// does not know gets an entry, seen by nobody until its first commit. Delete: refused if the lock
    /// is held, or if there is no file (unknown, or already a tombstone).
    pub fn acquire(&mut self, name: &SafeName, client: &ClientId, kind: LeaseKind) -> Result<(), Refusal> {
        if let Some(slot) = self.slots.get_mut(name) {
            if let Some(lease) = &slot.lease {
                if lease.holder == *client && lease.kind == kind {
                    return Ok(());
                }
                return Err(Refusal::FileLocked { holder: lease.holder.clone() });
            }
            if kind == LeaseKind::Delete && slot.committed.is_none_or(|e| e.is_deleted()) {
                return Err(Refusal::NoFileToDelete);
            }
            slot.lease = Some(Lease { holder: client.clone(), kind });
            return Ok(());
        }
        if kind == LeaseKind::Delete {
            return Err(Refusal::NoFileToDelete);
        }
        self.make_room(entry_len(name.as_str()))?;
        self.body_bytes += entry_len(name.as_str());
        self.slots.insert(name.clone(), Slot { committed: None, lease: Some(Lease { holder: client.clone(), kind }) });
        self.assert_consistent();
        Ok(())
    }

    /// Records the upload `client` finished (the file is already in place on disk) and releases the
    /// lock. Returns the new entry, with the next version.
    pub fn commit_update(
        &mut self,
        name: &SafeName,
        client: &ClientId,
        size: u64,
        md5: Md5Sum,
        mtime_ns: i64,
    ) -> Result<MetaEntry, LeaseError> {
        self.commit(name, client, LeaseKind::Update, mtime_ns, EntryState::File { size, md5 })
    }

    /// Records the delete `client` carried out (the file is already gone from disk) as a tombstone and
    /// releases the lock.
    pub fn commit_delete(
        &mut self,
        name: &SafeName,
        client: &ClientId,
        mtime_ns: i64,
    ) -> Result<MetaEntry, LeaseError> {
        self.commit(name, client, LeaseKind::Delete, mtime_ns, EntryState::Deleted)
    }

    fn commit(
        &mut self,
        name: &SafeName,
        client: &ClientId,
        kind: LeaseKind,
        mtime_ns: i64,
        state: EntryState,
    ) -> Result<MetaEntry, LeaseError> {
        let not_held = || LeaseError { name: name.clone(), client: client.clone(), kind };
        let slot = self.slots.get_mut(name).ok_or_else(not_held)?;
        if slot.lease.as_ref().is_none_or(|l| l.holder != *client || l.kind != kind) {
            return Err(not_held());
        }
        assert!(self.last_version < u64::MAX, "roster versions exhausted");
        self.last_version += 1;
        let entry = MetaEntry { version: self.last_version, mtime_ns, state };
        slot.committed = Some(entry);
        slot.lease = None;
        Ok(entry)
    }

    /// Gives up `client`'s lock on `name` without committing (an aborted upload, a failed delete).
    /// Returns whether it held one.
    pub fn release(&mut self, name: &SafeName, client: &ClientId) -> bool {
        let Some(slot) = self.slots.get_mut(name) else { return false };
        if slot.lease.as_ref().is_none_or(|l| l.holder != *client) {
            return false;
        }
        slot.lease = None;
        if slot.committed.is_none() {
            self.slots.remove(name);
            self.body_bytes -= entry_len(name.as_str());
        }
        self.assert_consistent();
        true
    }

    /// Gives up every lock `client` holds (it disconnected). Returns the names, in order.
    pub fn release_all(&mut self, client: &ClientId) -> Vec<SafeName> {
        let held: Vec<SafeName> = self
            .slots
            .iter()
            .filter(|(_, s)| s.lease.as_ref().is_some_and(|l| l.holder == *client))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &held {
            self.release(name, client);
        }
        held
    }

    /// Forgets tombstones made before `before_ns` (unless locked); returns how many.
    pub fn prune_tombstones(&mut self, before_ns: i64) -> usize {
        let old: Vec<SafeName> = self
            .slots
            .iter()
            .filter(|(_, s)| s.lease.is_none() && s.committed.is_some_and(|e| e.is_deleted() && e.mtime_ns < before_ns))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &old {
            self.slots.remove(name);
            self.body_bytes -= entry_len(name.as_str());
        }
        self.assert_consistent();
        old.len()
    }

    /// Makes room for one more entry of `len` bytes, forgetting the oldest unlocked tombstones.
    fn make_room(&mut self, len: usize) -> Result<(), Refusal> {
        while self.slots.len() + 1 > self.max_entries || self.body_bytes + len > self.max_bytes {
            let oldest = self
                .slots
                .iter()
                .filter(|(_, s)| s.lease.is_none() && s.committed.is_some_and(|e| e.is_deleted()))
                .min_by_key(|(_, s)| s.committed.map(|e| (e.mtime_ns, e.version)))
                .map(|(n, _)| n.clone());
            let Some(oldest) = oldest else {
                return Err(Refusal::Full { max_entries: self.max_entries, max_bytes: self.max_bytes });
            };
            self.slots.remove(&oldest);
            self.body_bytes -= entry_len(oldest.as_str());
        }
        Ok(())
    }

    /// The committed state of `name`: `None` if unknown or still being uploaded for the first time.
    pub fn get(&self, name: &SafeName) -> Option<&MetaEntry> {
        self.slots.get(name).and_then(|s| s.committed.as_ref())
    }

    /// Who holds the lock on `name`.
    pub fn lease(&self, name: &SafeName) -> Option<&Lease> {
        self.slots.get(name).and_then(|s| s.lease.as_ref())
    }

    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    /// Entries, including files whose first upload is in progress.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The META-DATA to send a client on connect (and to save): committed entries only.
    pub fn snapshot(&self) -> Metadata {
        Metadata {
            last_version: self.last_version,
            entries: self.slots.iter().filter_map(|(n, s)| s.committed.map(|e| (n.clone(), e))).collect(),
        }
    }

    fn assert_consistent(&self) {
        assert!(self.slots.len() <= self.max_entries, "roster holds more entries than its limit");
        debug_assert_eq!(self.body_bytes, self.slots.keys().map(|n| entry_len(n.as_str())).sum::<usize>());
        debug_assert!(self.slots.values().all(|s| s.committed.is_some() || s.lease.is_some()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn c(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    fn roster() -> Roster {
        Roster::new(&Limits::default())
    }

    fn upload(r: &mut Roster, name: &str, client: &str, content: &[u8]) -> MetaEntry {
        r.acquire(&n(name), &c(client), LeaseKind::Update).unwrap();
        r.commit_update(&n(name), &c(client), content.len() as u64, Md5Sum::of(content), 1).unwrap()
    }

    #[test]
    fn first_updater_wins() {
        let mut r = roster();
        assert_eq!(r.acquire(&n("f"), &c("a"), LeaseKind::Update), Ok(()));
        assert_eq!(r.lease(&n("f")), Some(&Lease { holder: c("a"), kind: LeaseKind::Update }));
        let refused = r.acquire(&n("f"), &c("b"), LeaseKind::Update).unwrap_err();
        assert_eq!(refused, Refusal::FileLocked { holder: c("a") });
        assert_eq!(refused.status(), StatusCode::FileLocked);
        assert_eq!(refused.to_string(), "file is locked by client a");
        // Deletes are refused alike.
        assert_eq!(r.acquire(&n("f"), &c("b"), LeaseKind::Delete), Err(Refusal::FileLocked { holder: c("a") }));
        // The holder asking again is fine; asking for the other kind is not.
        assert_eq!(r.acquire(&n("f"), &c("a"), LeaseKind::Update), Ok(()));
        assert_eq!(r.acquire(&n("f"), &c("a"), LeaseKind::Delete), Err(Refusal::FileLocked { holder: c("a") }));
        // Other files are not affected.
        assert_eq!(r.acquire(&n("g"), &c("b"), LeaseKind::Update), Ok(()));
    }

    #[test]
    fn a_new_file_is_invisible_until_committed() {
        let mut r = roster();
        r.acquire(&n("new"), &c("a"), LeaseKind::Update).unwrap();
        assert_eq!(r.get(&n("new")), None);
        assert!(r.snapshot().entries.is_empty());
        assert_eq!(r.len(), 1);
        let e = r.commit_update(&n("new"), &c("a"), 2, Md5Sum::of(b"hi"), 77).unwrap();
        assert_eq!(
            e,
            MetaEntry { version: 1, mtime_ns: 77, state: EntryState::File { size: 2, md5: Md5Sum::of(b"hi") } }
        );
        assert_eq!(r.get(&n("new")), Some(&e));
        assert_eq!(r.lease(&n("new")), None, "commit releases the lock");
        assert_eq!(r.snapshot().entries.get(&n("new")), Some(&e));
    }

    #[test]
    fn versions_come_from_one_counter() {
        let mut r = roster();
        assert_eq!(upload(&mut r, "a", "x", b"1").version, 1);
        assert_eq!(upload(&mut r, "b", "x", b"1").version, 2);
        assert_eq!(upload(&mut r, "a", "y", b"2").version, 3);
        r.acquire(&n("a"), &c("y"), LeaseKind::Delete).unwrap();
        assert_eq!(r.commit_delete(&n("a"), &c("y"), 5).unwrap().version, 4);
        assert_eq!(upload(&mut r, "a", "x", b"3").version, 5, "a recreated file gets a new, higher version");
        assert_eq!(r.last_version(), 5);
        assert_eq!(r.snapshot().last_version, 5);
    }

    #[test]
    fn deleting_an_unknown_file_is_no_file_to_delete() {
        let mut r = roster();
        let refused = r.acquire(&n("nope"), &c("a"), LeaseKind::Delete).unwrap_err();
        assert_eq!(refused, Refusal::NoFileToDelete);
        assert_eq!(refused.status(), StatusCode::NoFileToDelete);
        assert!(r.is_empty(), "a refused delete leaves no entry");
        upload(&mut r, "f", "a", b"x");
        r.acquire(&n("f"), &c("a"), LeaseKind::Delete).unwrap();
        let tomb = r.commit_delete(&n("f"), &c("a"), 9).unwrap();
        assert_eq!(tomb, MetaEntry { version: 2, mtime_ns: 9, state: EntryState::Deleted });
        assert_eq!(r.get(&n("f")), Some(&tomb), "the tombstone stays");
        assert_eq!(r.acquire(&n("f"), &c("b"), LeaseKind::Delete), Err(Refusal::NoFileToDelete));
        // A file whose first upload is in progress has nothing to delete, but it is locked.
        r.acquire(&n("g"), &c("a"), LeaseKind::Update).unwrap();
        assert_eq!(r.acquire(&n("g"), &c("b"), LeaseKind::Delete), Err(Refusal::FileLocked { holder: c("a") }));
    }

    #[test]
    fn commits_need_the_lease() {
        let mut r = roster();
        let err = r.commit_update(&n("f"), &c("a"), 0, Md5Sum::EMPTY, 0).unwrap_err();
        assert_eq!(err.to_string(), "client a holds no Update lease on f");
        r.acquire(&n("f"), &c("a"), LeaseKind::Update).unwrap();
        assert!(r.commit_update(&n("f"), &c("b"), 0, Md5Sum::EMPTY, 0).is_err());
        assert!(r.commit_delete(&n("f"), &c("a"), 0).is_err(), "an update lease does not allow a delete");
        assert_eq!(r.last_version(), 0);
    }

    #[test]
    fn release_ends_a_lease_and_drops_a_never_committed_file() {
        let mut r = roster();
        upload(&mut r, "old", "a", b"x");
        r.acquire(&n("old"), &c("a"), LeaseKind::Update).unwrap();
        r.acquire(&n("new"), &c("a"), LeaseKind::Update).unwrap();
        assert!(!r.release(&n("old"), &c("b")), "only the holder releases");
        assert!(r.release(&n("old"), &c("a")));
        assert!(r.release(&n("new"), &c("a")));
        assert!(!r.release(&n("new"), &c("a")));
        assert_eq!(r.get(&n("old")).map(|e| e.version), Some(1), "the committed state is untouched");
        assert_eq!(r.len(), 1);
        assert_eq!(r.acquire(&n("old"), &c("b"), LeaseKind::Update), Ok(()));
    }

    #[test]
    fn a_disconnect_releases_all_of_a_clients_leases() {
        let mut r = roster();
        upload(&mut r, "kept", "a", b"x");
        r.acquire(&n("kept"), &c("a"), LeaseKind::Delete).unwrap();
        r.acquire(&n("half-uploaded"), &c("a"), LeaseKind::Update).unwrap();
        r.acquire(&n("other"), &c("b"), LeaseKind::Update).unwrap();
        assert_eq!(r.release_all(&c("a")), [n("half-uploaded"), n("kept")]);
        assert_eq!(r.get(&n("half-uploaded")), None);
        assert_eq!(r.lease(&n("kept")), None);
        assert!(r.get(&n("kept")).is_some_and(|e| !e.is_deleted()));
        assert_eq!(r.lease(&n("other")).map(|l| l.holder.clone()), Some(c("b")));
        assert_eq!(r.acquire(&n("half-uploaded"), &c("b"), LeaseKind::Update), Ok(()));
        assert!(r.release_all(&c("a")).is_empty());
    }

    #[test]
    fn full_roster_forgets_the_oldest_tombstone_or_refuses() {
        let limits = Limits { max_metadata_entries: 2, ..Limits::default() };
        let mut r = Roster::new(&limits);
        upload(&mut r, "a", "x", b"1");
        upload(&mut r, "b", "x", b"1");
        let full = r.acquire(&n("c"), &c("x"), LeaseKind::Update).unwrap_err();
        assert_eq!(full, Refusal::Full { max_entries: 2, max_bytes: limits.max_metadata_bytes as usize });
        assert_eq!(full.status(), StatusCode::FileInUse);
        // Existing files can still be updated.
        assert_eq!(upload(&mut r, "a", "x", b"2").version, 3);
        for (name, when) in [("a", 20), ("b", 10)] {
            r.acquire(&n(name), &c("x"), LeaseKind::Delete).unwrap();
            r.commit_delete(&n(name), &c("x"), when).unwrap();
        }
        upload(&mut r, "c", "x", b"1");
        assert_eq!(r.get(&n("b")), None, "b's tombstone was the oldest");
        assert!(r.get(&n("a")).is_some_and(|e| e.is_deleted()));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn the_byte_limit_counts_names() {
        let limits = Limits { max_metadata_bytes: 2 * 43 + 3, ..Limits::default() };
        let mut r = Roster::new(&limits);
        upload(&mut r, "ab", "x", b"1");
        assert!(matches!(r.acquire(&n("cd"), &c("x"), LeaseKind::Update), Err(Refusal::Full { .. })));
        assert_eq!(r.acquire(&n("e"), &c("x"), LeaseKind::Update), Ok(()));
    }

    #[test]
    fn pruning_forgets_old_unlocked_tombstones() {
        let mut r = roster();
        for (name, when) in [("a", 1), ("b", 5), ("c", 9)] {
            upload(&mut r, name, "x", b"1");
            r.acquire(&n(name), &c("x"), LeaseKind::Delete).unwrap();
            r.commit_delete(&n(name), &c("x"), when).unwrap();
        }
        upload(&mut r, "live", "x", b"1");
        r.acquire(&n("a"), &c("y"), LeaseKind::Update).unwrap();
        assert_eq!(r.prune_tombstones(6), 1, "b only: a is locked, c is recent");
        assert_eq!(r.get(&n("b")), None);
        assert!(r.get(&n("a")).is_some() && r.get(&n("c")).is_some() && r.get(&n("live")).is_some());
    }

    #[test]
    fn snapshot_round_trips_through_from_metadata() {
        let mut r = roster();
        upload(&mut r, "a", "x", b"1");
        upload(&mut r, "b/c", "x", b"22");
        r.acquire(&n("a"), &c("x"), LeaseKind::Delete).unwrap();
        r.commit_delete(&n("a"), &c("x"), 3).unwrap();
        r.acquire(&n("pending"), &c("x"), LeaseKind::Update).unwrap();
        let snap = r.snapshot();
        let back = Roster::from_metadata(snap.clone(), &Limits::default()).unwrap();
        assert_eq!(back.snapshot(), snap);
        assert_eq!(back.last_version(), 3);
        assert_eq!(back.lease(&n("a")), None, "leases are not saved");
    }

    #[test]
    fn from_metadata_checks_limits_and_versions() {
        let mut r = roster();
        upload(&mut r, "a", "x", b"1");
        upload(&mut r, "b", "x", b"1");
        let small = Limits { max_metadata_entries: 1, ..Limits::default() };
        assert_eq!(
            Roster::from_metadata(r.snapshot(), &small).unwrap_err(),
            RosterError::TooManyEntries { count: 2, max: 1 }
        );
        let tiny = Limits { max_metadata_bytes: 50, ..Limits::default() };
        assert_eq!(Roster::from_metadata(r.snapshot(), &tiny).unwrap_err(), RosterError::TooLarge { len: 88, max: 50 });
        let mut bad = r.snapshot();
        bad.last_version = 1;
        assert!(matches!(Roster::from_metadata(bad, &Limits::default()), Err(RosterError::VersionAboveLast { .. })));
    }

    proptest! {
        /// Random operations from three clients: the lock is exclusive, versions only grow, and the
        /// snapshot always fits the limits and encodes.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec((0u8..5, 0u8..3, 0u8..4), 0..80)) {
            let limits = Limits { max_metadata_entries: 3, ..Limits::default() };
            let mut r = Roster::new(&limits);
            let mut last = 0;
            for (op, client, file) in ops {
                let (client, name) = (c(&format!("c{client}")), n(&format!("f{file}")));
                let before = r.lease(&name).cloned();
                match op {
                    0 | 1 => {
                        let kind = if op == 0 { LeaseKind::Update } else { LeaseKind::Delete };
                        let result = r.acquire(&name, &client, kind);
                        if let Some(l) = &before {
                            prop_assert_eq!(result.is_ok(), l.holder == client && l.kind == kind);
                        }
                        if result.is_ok() {
                            prop_assert_eq!(r.lease(&name), Some(&Lease { holder: client, kind }));
                        }
                    }
                    2 => {
                        let held = before.as_ref().is_some_and(|l| l.holder == client);
                        let result = match before.map(|l| l.kind) {
                            Some(LeaseKind::Delete) => r.commit_delete(&name, &client, 0).map(|_| ()),
                            _ => r.commit_update(&name, &client, 1, Md5Sum::of(b"x"), 0).map(|_| ()),
                        };
                        prop_assert_eq!(result.is_ok(), held);
                    }
                    3 => { r.release(&name, &client); }
                    _ => { r.release_all(&client); }
                }
                prop_assert!(r.last_version() >= last);
                last = r.last_version();
                prop_assert!(r.len() <= 3);
                let snap = r.snapshot();
                prop_assert!(snap.entries.values().all(|e| e.version >= 1 && e.version <= last));
                let mut buf = bytes::BytesMut::new();
                crate::Message::MetaData(snap).encode(&mut buf);
                let mut cur = std::io::Cursor::new(&buf[..]);
                prop_assert!(crate::Message::parse(&mut cur, &limits).is_ok());
            }
        }
    }
}
