//! The client's connect-time reconciliation: its metadata against the server's META-DATA, file by file,
//! into the list of things to do.
//!
//! The seed's four rules: (1) the server has a newer version → Request File Update; (2) the client has
//! a newer version → upload it; (3) the server has a file the client does not → Request File Update;
//! (4) the client has a file the server does not → upload it. "Newer" is decided without clocks: the
//! client's copy is newer if it changed since its last common version with the server
//! ([`LocalEntry::is_modified`]); the server's is newer if its md5 differs from that common version
//! (unless its version number is below the one the client synced, which means the server lost data
//! and the client's copy is the newer one).
//!
//! ferry adds that nothing is ever lost:
//! - both changed → the local version is kept as a conflicted copy (which is then uploaded like any new
//!   file) and the server's version is requested; the seed would overwrite the local edit;
//! - changed on one side, deleted on the other → the change wins: a modified file is uploaded over a
//!   tombstone, a file the client deleted but the server modified is requested back;
//! - deleted on one side, untouched on the other → deleted on both.
//!
//! Tombstones are what let a client tell "deleted on the server" from "new here" (rule 4).

use std::collections::BTreeSet;

use ferry_files::SafeName;

use crate::conflict_name::{ConflictNameError, conflicted_copy_name};
use crate::{ClientId, EntryState, LocalEntry, LocalMetadata, Md5Sum, MetaEntry, Metadata, Synced};

/// One thing for the client to do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Upload the local file (rules 2 and 4). Refused with File Locked: the client gives up, as the
    /// seed says, and its metadata keeps the local change for the next connect.
    Upload { name: SafeName },
    /// Send Request File Update (rules 1 and 3); `md5` is the local copy's, zeros if there is none.
    RequestUpdate { name: SafeName, md5: Md5Sum },
    /// Rename the local file to `copy` (same directory) before the server's version replaces it. The
    /// two actions after it are `RequestUpdate { name }` and `Upload { name: copy }`.
    KeepConflictedCopy { name: SafeName, copy: SafeName },
    /// Delete the local file: the server deleted it and the local copy holds no change.
    DeleteLocal { name: SafeName },
    /// Send Delete File: the client deleted the file since its last sync; `md5` is that version's.
    SendDelete { name: SafeName, md5: Md5Sum },
    /// Nothing to transfer: the local file is the server's version `version`; record it as synced.
    RecordSynced { name: SafeName, md5: Md5Sum, version: u64 },
    /// Drop the local entry: a local delete the server already has, or a file neither side has.
    Forget { name: SafeName },
    /// Leave the local file alone and take nothing from the server for now: both changed, and no
    /// conflicted-copy name could be made. Nothing is overwritten; the next connect tries again.
    Hold { name: SafeName, reason: ConflictNameError },
}

/// What one file needs, before conflicted copies are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Nothing,
    Upload,
    RequestUpdate,
    Conflict,
    DeleteLocal,
    SendDelete(Md5Sum),
    RecordSynced { md5: Md5Sum, version: u64 },
    Forget,
}

/// The actions that bring `local` and `server` together, by file name. `client` and `now_unix_secs`
/// name conflicted copies; `max_name_len` bounds their names.
pub fn reconcile(
    local: &LocalMetadata,
    server: &Metadata,
    client: &ClientId,
    now_unix_secs: i64,
    max_name_len: usize,
) -> Vec<Action> {
    let names: BTreeSet<&SafeName> = local.keys().chain(server.entries.keys()).collect();
    let mut copies: BTreeSet<SafeName> = BTreeSet::new();
    let mut actions = Vec::new();
    for name in names {
        let here = local.get(name);
        let md5_here = here.and_then(|e| e.current).map_or(Md5Sum::ZERO, |f| f.md5);
        let name = name.clone();
        match decide(here, server.entries.get(&name)) {
            Decision::Nothing => {}
            Decision::Upload => actions.push(Action::Upload { name }),
            Decision::RequestUpdate => actions.push(Action::RequestUpdate { name, md5: md5_here }),
            Decision::DeleteLocal => actions.push(Action::DeleteLocal { name }),
            Decision::SendDelete(md5) => actions.push(Action::SendDelete { name, md5 }),
            Decision::RecordSynced { md5, version } => actions.push(Action::RecordSynced { name, md5, version }),
            Decision::Forget => actions.push(Action::Forget { name }),
            Decision::Conflict => {
                let taken =
                    |c: &SafeName| local.contains_key(c) || server.entries.contains_key(c) || copies.contains(c);
                match conflicted_copy_name(&name, client, now_unix_secs, max_name_len, taken) {
                    Ok(copy) => {
                        copies.insert(copy.clone());
                        actions.push(Action::KeepConflictedCopy { name: name.clone(), copy: copy.clone() });
                        actions.push(Action::RequestUpdate { name, md5: Md5Sum::ZERO });
                        actions.push(Action::Upload { name: copy });
                    }
                    Err(reason) => actions.push(Action::Hold { name, reason }),
                }
            }
        }
    }
    actions
}

/// The rules, for one file: what the client has (`None`: never heard of it) against what the server has.
fn decide(local: Option<&LocalEntry>, server: Option<&MetaEntry>) -> Decision {
    let Some(local) = local else {
        // Rule 3, and a tombstone for a file the client never had needs nothing.
        return match server {
            Some(e) if !e.is_deleted() => Decision::RequestUpdate,
            _ => Decision::Nothing,
        };
    };
    // The server's version is older than the one this client synced: the server lost data.
    let behind = |base: Synced, version: u64| base.version.is_some_and(|v| version < v);
    let server = server.map(|e| (e.version, e.state));
    match (local.current, local.synced, server) {
        // Created and deleted here before any sync: as if never seen (rule 3 if the server has one).
        (None, None, Some((_, EntryState::File { .. }))) => Decision::RequestUpdate,
        // Gone here, and the server never had it or deleted it too.
        (None, None, _) | (None, Some(_), None | Some((_, EntryState::Deleted))) => Decision::Forget,
        // Deleted here since the last sync: the delete goes to the server, unless the server has a
        // newer version, which beats the delete.
        (None, Some(base), Some((version, EntryState::File { md5, .. }))) => {
            if md5 == base.md5 || behind(base, version) {
                Decision::SendDelete(base.md5)
            } else {
                Decision::RequestUpdate
            }
        }
        // Rule 4.
        (Some(_), _, None) => Decision::Upload,
        // Same content on both sides: learn the version if it is news.
        (Some(file), base, Some((version, EntryState::File { md5, .. }))) if md5 == file.md5 => {
            if base == Some(Synced { md5, version: Some(version) }) {
                Decision::Nothing
            } else {
                Decision::RecordSynced { md5, version }
            }
        }
        // Created on both sides with different contents.
        (Some(_), None, Some((_, EntryState::File { .. }))) => Decision::Conflict,
        (Some(file), Some(base), Some((version, EntryState::File { md5, .. }))) => {
            let changed_here = file.md5 != base.md5;
            let changed_there = md5 != base.md5 && !behind(base, version);
            match (changed_here, changed_there) {
                // Rule 2 (or the server is behind, and the copy here is the newer one).
                (_, false) => Decision::Upload,
                // Rule 1.
                (false, true) => Decision::RequestUpdate,
                (true, true) => Decision::Conflict,
            }
        }
        // A file created here, over a name the server has a tombstone for: a new file.
        (Some(_), None, Some((_, EntryState::Deleted))) => Decision::Upload,
        (Some(file), Some(base), Some((version, EntryState::Deleted))) => {
            if file.md5 != base.md5 || behind(base, version) {
                // Modify beats delete (or the server is behind).
                Decision::Upload
            } else {
                Decision::DeleteLocal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::LocalFile;
    use proptest::prelude::*;

    /// 2023-11-14 22:13:20 UTC.
    const NOW: i64 = 1_700_000_000;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn md5(s: &str) -> Md5Sum {
        Md5Sum::of(s.as_bytes())
    }

    fn file(content: &str) -> LocalFile {
        LocalFile { size: content.len() as u64, mtime_ns: 5, md5: md5(content) }
    }

    /// A local entry: current content (`None`: deleted here), last synced content and version.
    fn here(current: Option<&str>, synced: Option<(&str, Option<u64>)>) -> LocalEntry {
        LocalEntry { current: current.map(file), synced: synced.map(|(c, version)| Synced { md5: md5(c), version }) }
    }

    fn there(content: &str, version: u64) -> MetaEntry {
        MetaEntry { version, mtime_ns: 5, state: EntryState::File { size: content.len() as u64, md5: md5(content) } }
    }

    fn tomb(version: u64) -> MetaEntry {
        MetaEntry { version, mtime_ns: 5, state: EntryState::Deleted }
    }

    #[test]
    fn the_seeds_four_rules() {
        // Rule 1: the server has a newer version (the local copy is unchanged since the last sync).
        assert_eq!(
            decide(Some(&here(Some("v1"), Some(("v1", Some(1))))), Some(&there("v2", 2))),
            Decision::RequestUpdate
        );
        assert_eq!(decide(Some(&here(Some("v1"), Some(("v1", None)))), Some(&there("v2", 2))), Decision::RequestUpdate);
        // Rule 2: the client has a newer version (the server's is the one it last synced).
        assert_eq!(decide(Some(&here(Some("v2"), Some(("v1", Some(1))))), Some(&there("v1", 1))), Decision::Upload);
        assert_eq!(decide(Some(&here(Some("v2"), Some(("v1", None)))), Some(&there("v1", 1))), Decision::Upload);
        // Rule 3: the server has a file the client does not.
        assert_eq!(decide(None, Some(&there("v1", 1))), Decision::RequestUpdate);
        // Rule 4: the client has a file the server does not.
        assert_eq!(decide(Some(&here(Some("v1"), None)), None), Decision::Upload);
        assert_eq!(decide(Some(&here(Some("v1"), Some(("v1", Some(4))))), None), Decision::Upload);
    }

    #[test]
    fn in_sync_files_need_no_transfer() {
        assert_eq!(decide(Some(&here(Some("v"), Some(("v", Some(3))))), Some(&there("v", 3))), Decision::Nothing);
        // The version is learned when it was not known, or when both sides reached the same content.
        let learn = Decision::RecordSynced { md5: md5("v"), version: 3 };
        assert_eq!(decide(Some(&here(Some("v"), Some(("v", None)))), Some(&there("v", 3))), learn);
        assert_eq!(decide(Some(&here(Some("v"), Some(("old", Some(1))))), Some(&there("v", 3))), learn);
        assert_eq!(decide(Some(&here(Some("v"), None)), Some(&there("v", 3))), learn);
        assert_eq!(decide(None, Some(&tomb(3))), Decision::Nothing);
    }

    #[test]
    fn both_changed_is_a_conflict() {
        assert_eq!(
            decide(Some(&here(Some("mine"), Some(("v1", Some(1))))), Some(&there("theirs", 2))),
            Decision::Conflict
        );
        assert_eq!(
            decide(Some(&here(Some("mine"), Some(("v1", None)))), Some(&there("theirs", 2))),
            Decision::Conflict
        );
        // Created on both sides independently.
        assert_eq!(decide(Some(&here(Some("mine"), None)), Some(&there("theirs", 2))), Decision::Conflict);
    }

    #[test]
    fn a_server_that_lost_data_gets_the_newer_copy_back() {
        // The client synced version 7; the server now says version 5 with other content.
        assert_eq!(decide(Some(&here(Some("v7"), Some(("v7", Some(7))))), Some(&there("v5", 5))), Decision::Upload);
        assert_eq!(decide(Some(&here(Some("v7"), Some(("v7", Some(7))))), Some(&tomb(5))), Decision::Upload);
        assert_eq!(
            decide(Some(&here(None, Some(("v7", Some(7))))), Some(&there("v5", 5))),
            Decision::SendDelete(md5("v7"))
        );
    }

    #[test]
    fn modify_beats_delete() {
        // Modified here, deleted on the server: uploaded again.
        assert_eq!(decide(Some(&here(Some("mine"), Some(("v1", Some(1))))), Some(&tomb(2))), Decision::Upload);
        assert_eq!(decide(Some(&here(Some("new"), None)), Some(&tomb(2))), Decision::Upload);
        // Deleted here, modified on the server: requested back.
        assert_eq!(decide(Some(&here(None, Some(("v1", Some(1))))), Some(&there("v2", 2))), Decision::RequestUpdate);
        assert_eq!(decide(Some(&here(None, Some(("v1", None)))), Some(&there("v2", 2))), Decision::RequestUpdate);
    }

    #[test]
    fn deletes_propagate_when_the_other_side_is_untouched() {
        // Deleted on the server, untouched here.
        assert_eq!(decide(Some(&here(Some("v1"), Some(("v1", Some(1))))), Some(&tomb(2))), Decision::DeleteLocal);
        assert_eq!(decide(Some(&here(Some("v1"), Some(("v1", None)))), Some(&tomb(2))), Decision::DeleteLocal);
        // Deleted here, untouched on the server.
        assert_eq!(
            decide(Some(&here(None, Some(("v1", Some(1))))), Some(&there("v1", 1))),
            Decision::SendDelete(md5("v1"))
        );
        assert_eq!(
            decide(Some(&here(None, Some(("v1", None)))), Some(&there("v1", 4))),
            Decision::SendDelete(md5("v1"))
        );
    }

    #[test]
    fn settled_deletes_are_forgotten() {
        assert_eq!(decide(Some(&here(None, Some(("v1", Some(1))))), Some(&tomb(2))), Decision::Forget);
        assert_eq!(decide(Some(&here(None, Some(("v1", Some(1))))), None), Decision::Forget);
        assert_eq!(decide(Some(&here(None, None)), None), Decision::Forget);
        assert_eq!(decide(Some(&here(None, None)), Some(&tomb(1))), Decision::Forget);
        assert_eq!(decide(Some(&here(None, None)), Some(&there("x", 1))), Decision::RequestUpdate);
    }

    fn run(local: &[(&str, LocalEntry)], server: &[(&str, MetaEntry)]) -> Vec<Action> {
        let local: LocalMetadata = local.iter().map(|(k, v)| (n(k), *v)).collect();
        let entries: BTreeMap<_, _> = server.iter().map(|(k, v)| (n(k), *v)).collect();
        let last_version = entries.values().map(|e| e.version).max().unwrap_or(0);
        let server = Metadata { last_version, entries };
        reconcile(&local, &server, &ClientId::parse("pc").unwrap(), NOW, 1024)
    }

    #[test]
    fn actions_come_in_name_order() {
        let actions = run(
            &[
                ("b-upload", here(Some("x"), None)),
                ("d-delete-remote", here(None, Some(("x", Some(1))))),
                ("e-delete-local", here(Some("x"), Some(("x", Some(1))))),
                ("f-same", here(Some("x"), Some(("x", Some(1))))),
            ],
            &[
                ("a-request", there("x", 1)),
                ("d-delete-remote", there("x", 1)),
                ("e-delete-local", tomb(2)),
                ("f-same", there("x", 1)),
            ],
        );
        assert_eq!(
            actions,
            [
                Action::RequestUpdate { name: n("a-request"), md5: Md5Sum::ZERO },
                Action::Upload { name: n("b-upload") },
                Action::SendDelete { name: n("d-delete-remote"), md5: md5("x") },
                Action::DeleteLocal { name: n("e-delete-local") },
            ]
        );
    }

    #[test]
    fn request_update_carries_the_local_md5() {
        let actions = run(&[("f", here(Some("v1"), Some(("v1", Some(1)))))], &[("f", there("v2", 2))]);
        assert_eq!(actions, [Action::RequestUpdate { name: n("f"), md5: md5("v1") }]);
    }

    #[test]
    fn a_conflict_keeps_the_local_version_then_takes_the_servers() {
        let actions =
            run(&[("doc.txt", here(Some("mine"), Some(("v1", Some(1)))))], &[("doc.txt", there("theirs", 2))]);
        let copy = n("doc (conflicted copy pc 2023-11-14 221320).txt");
        assert_eq!(
            actions,
            [
                Action::KeepConflictedCopy { name: n("doc.txt"), copy: copy.clone() },
                Action::RequestUpdate { name: n("doc.txt"), md5: Md5Sum::ZERO },
                Action::Upload { name: copy },
            ]
        );
    }

    #[test]
    fn conflicted_copies_do_not_collide() {
        let taken = "doc (conflicted copy pc 2023-11-14 221320).txt";
        let actions = run(
            &[("doc.txt", here(Some("mine"), None)), (taken, here(Some("older copy"), Some(("older copy", Some(1)))))],
            &[("doc.txt", there("theirs", 2)), (taken, there("older copy", 1))],
        );
        assert_eq!(
            actions[0],
            Action::KeepConflictedCopy {
                name: n("doc.txt"),
                copy: n("doc (conflicted copy pc 2023-11-14 221320 2).txt")
            }
        );
    }

    #[test]
    fn an_unnameable_conflict_is_held() {
        let local: LocalMetadata = [(n("d/file.txt"), here(Some("mine"), None))].into_iter().collect();
        let server =
            Metadata { last_version: 2, entries: [(n("d/file.txt"), there("theirs", 2))].into_iter().collect() };
        let actions = reconcile(&local, &server, &ClientId::parse("pc").unwrap(), NOW, 20);
        assert_eq!(
            actions,
            [Action::Hold { name: n("d/file.txt"), reason: ConflictNameError::TooLong(n("d/file.txt")) }]
        );
    }

    fn arb_local() -> impl Strategy<Value = Option<LocalEntry>> {
        let content = prop_oneof![Just("a"), Just("b"), Just("c")];
        let synced = proptest::option::of((content.clone(), proptest::option::of(1u64..6)));
        proptest::option::of((proptest::option::of(content), synced).prop_map(|(c, s)| here(c, s)))
    }

    fn arb_server() -> impl Strategy<Value = Option<MetaEntry>> {
        let content = prop_oneof![Just("a"), Just("b"), Just("c")];
        proptest::option::of(prop_oneof![(content, 1u64..6).prop_map(|(c, v)| there(c, v)), (1u64..6).prop_map(tomb),])
    }

    proptest! {
        /// No local edit is ever destroyed: a file whose content the server lacks is never deleted or
        /// replaced without being uploaded or kept as a conflicted copy first.
        #[test]
        fn no_local_change_is_lost(local in arb_local(), server in arb_server()) {
            let d = decide(local.as_ref(), server.as_ref());
            let has_unsent_change = local.is_some_and(|l| l.is_modified())
                && server.and_then(|s| s.md5()) != local.and_then(|l| l.current).map(|f| f.md5);
            if has_unsent_change {
                prop_assert!(matches!(d, Decision::Upload | Decision::Conflict), "{local:?} {server:?} -> {d:?}");
            }
            // A server file newer than the client's is never deleted by a client that did not change it.
            if let (Some(l), Some(EntryState::File { md5, .. })) = (local, server.map(|s| s.state)) {
                if l.current.is_none() && l.synced.is_some_and(|b| b.md5 != md5 && b.version.is_none()) {
                    prop_assert_eq!(d, Decision::RequestUpdate);
                }
            }
            // Running the decision's effect and deciding again settles: the two sides agree.
            prop_assert!(settles(local, server, d), "{local:?} {server:?} -> {d:?}");
        }
    }

    /// Applies `d` to both sides the way client and server would and checks a second pass has nothing
    /// left to transfer.
    fn settles(local: Option<LocalEntry>, server: Option<MetaEntry>, d: Decision) -> bool {
        let next_version = 100;
        let (local, server) = match d {
            Decision::Nothing => (local, server),
            Decision::Upload => {
                let f = local.and_then(|l| l.current).unwrap();
                (Some(LocalEntry::in_sync(f, None)), Some(there_md5(f.md5, next_version)))
            }
            Decision::RequestUpdate => {
                let s = server.unwrap();
                let md5 = s.md5().unwrap();
                (Some(LocalEntry::in_sync(LocalFile { size: 0, mtime_ns: 0, md5 }, Some(s.version))), server)
            }
            Decision::Conflict => {
                let s = server.unwrap();
                let md5 = s.md5().unwrap();
                (Some(LocalEntry::in_sync(LocalFile { size: 0, mtime_ns: 0, md5 }, Some(s.version))), server)
            }
            Decision::DeleteLocal | Decision::Forget => (None, server),
            Decision::SendDelete(_) => (None, Some(tomb(next_version))),
            Decision::RecordSynced { md5, version } => {
                let f = local.and_then(|l| l.current).unwrap();
                (Some(LocalEntry { current: Some(f), synced: Some(Synced { md5, version: Some(version) }) }), server)
            }
        };
        let again = decide(local.as_ref(), server.as_ref());
        matches!(again, Decision::Nothing | Decision::RecordSynced { .. } | Decision::Forget)
    }

    fn there_md5(md5: Md5Sum, version: u64) -> MetaEntry {
        MetaEntry { version, mtime_ns: 5, state: EntryState::File { size: 0, md5 } }
    }
}
