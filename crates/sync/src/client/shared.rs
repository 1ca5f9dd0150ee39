//! What the client's tasks share: its metadata, the files waiting to go to the server, and the
//! decisions that change the folder (a pushed file installed, a conflicted copy kept, a delete applied,
//! reconciliation carried out).
//!
//! Three tasks work on it: the watcher (local changes), the update connection (uploads, deletes and
//! update requests to the server) and the push connection (the server's updates). They meet only here,
//! behind one mutex held for in-memory work and single renames, never for reading or digesting a file.
//!
//! Echo suppression needs no list of its own: a file the client receives is recorded in the metadata,
//! with its size, mtime and md5, before the reply goes out, so the watcher events its rename causes find
//! the file unchanged, and nothing goes back to the server.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_files::SafeName;
use tokio::sync::watch;

use super::events::{SyncEvent, SyncObserver};
use super::folder::{Folder, mtime_ns};
use super::options::SyncOptions;
use super::state_file::StateFiles;
use crate::chunk_digests::{ChunkDigests, DigestCache, DigestedVersion};
use crate::reconcile::{Action, reconcile};
use crate::{
    ClientId, LocalEntry, LocalFile, LocalMetadata, Md5Sum, Metadata, StatusCode, Synced, conflicted_copy_name,
};

/// New files at least this large are uploaded before they are digested (their upload digests them;
/// [`Shared::refresh`]). Below it a digest costs less than a millisecond or so, and the file is digested
/// first as any other.
pub(crate) const UPLOAD_UNDIGESTED_FROM: u64 = 4 << 20;
/// Attempts at an upload or delete the server refused before the client waits for the next change or
/// connect.
const MAX_RETRIES: u32 = 5;
/// Wait before the first retry; each further one waits this much longer.
const RETRY_STEP: Duration = Duration::from_millis(500);

/// Work for the update connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Job {
    Upload { name: SafeName },
    Delete { name: SafeName, md5: Md5Sum },
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub metadata: LocalMetadata,
    /// Names whose local change (or delete) is still to reach the server; what to send is decided when
    /// the update connection takes one.
    dirty: BTreeSet<SafeName>,
    /// Request File Update messages to send.
    requests: VecDeque<(SafeName, Md5Sum)>,
    /// Names with an upload or delete on the update connection now.
    busy: HashSet<SafeName>,
    retries: HashMap<SafeName, u32>,
    /// The metadata changed since it was last saved.
    unsaved: bool,
}

/// The client's shared state.
pub(crate) struct Shared {
    pub folder: Folder,
    pub state: StateFiles,
    pub client_id: ClientId,
    pub options: SyncOptions,
    pub observer: Arc<dyn SyncObserver>,
    inner: Mutex<Inner>,
    /// The chunk digests of files digested when they changed, for their uploads.
    digests: Mutex<DigestCache>,
    /// Bumped when there is new work for the update connection.
    work: watch::Sender<u64>,
}

impl Shared {
    pub fn new(
        folder: Folder,
        state: StateFiles,
        client_id: ClientId,
        metadata: LocalMetadata,
        options: SyncOptions,
        observer: Arc<dyn SyncObserver>,
    ) -> Shared {
        let inner = Inner { metadata, ..Inner::default() };
        Shared {
            folder,
            state,
            client_id,
            options,
            observer,
            inner: Mutex::new(inner),
            digests: Mutex::new(DigestCache::new()),
            work: watch::channel(0).0,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest_cache(&self) -> MutexGuard<'_, DigestCache> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk digests of `name`'s content `version`, if its digest left them.
    pub fn chunk_digests(&self, name: &SafeName, version: DigestedVersion) -> Option<Arc<ChunkDigests>> {
        self.digest_cache().get(name, version)
    }

    /// Tells the update connection there is work.
    pub fn wake(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The update connection's wake-up signal.
    pub fn work_signal(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    fn event(&self, event: SyncEvent) {
        self.observer.event(event);
    }

    /// Looks at `name` on disk again and records what is there. With `mark`, a change the server lacks
    /// (an edit, a new file, a delete) is queued for the update connection. Blocking.
    ///
    /// A new file of [`UPLOAD_UNDIGESTED_FROM`] bytes or more, noticed by the watcher, is recorded
    /// undigested ([`LocalFile::is_undigested`]) and queued at once: it goes to the server whatever its
    /// md5, and its upload digests it as it reads it, instead of a whole pass over the file before the
    /// first byte is sent. The upload's md5 is recorded when the server commits it
    /// ([`Shared::upload_done`]); if the upload does not happen, the next look at the file digests it.
    pub fn refresh(&self, name: &SafeName, mark: bool) {
        let (known, before, busy) = {
            let inner = self.lock();
            let entry = inner.metadata.get(name);
            (entry.is_some(), entry.and_then(|e| e.current), inner.busy.contains(name))
        };
        let now = match self.folder.stat(name) {
            Ok(None) => None,
            Ok(Some(meta)) => {
                let same = before.is_some_and(|b| b.size == meta.len() && b.mtime_ns == mtime_ns(&meta));
                // An undigested record is left alone only while its upload (which digests it) runs.
                if same && (before.is_some_and(|b| !b.is_undigested()) || busy) {
                    return;
                }
                if mark && !known && meta.len() >= UPLOAD_UNDIGESTED_FROM {
                    Some(LocalFile { size: meta.len(), mtime_ns: mtime_ns(&meta), md5: Md5Sum::ZERO })
                } else {
                    match self.digest(name) {
                        Ok(file) => file,
                        Err(e) => {
                            tracing::warn!("cannot read {name}: {e}");
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot look at {name}: {e}");
                return;
            }
        };
        let mut inner = self.lock();
        let entry = inner.metadata.get(name).copied();
        if entry.and_then(|e| e.current) != before {
            // Changed meanwhile by the client itself (a pushed file installed): that record is current.
            return;
        }
        match (entry, now) {
            (None, None) => return,
            (None, Some(file)) => {
                inner.metadata.insert(name.clone(), LocalEntry::new_local(file));
            }
            (Some(entry), None) if entry.synced.is_none() => {
                inner.metadata.remove(name);
            }
            (Some(mut entry), now) => {
                entry.current = now;
                inner.metadata.insert(name.clone(), entry);
            }
        }
        inner.unsaved = true;
        if mark && inner.metadata.get(name).is_some_and(|e| e.is_modified() || e.is_deleted_locally()) {
            inner.dirty.insert(name.clone());
            inner.retries.remove(name);
        }
    }

    /// Digests `name` (`None`: not a regular file), keeping its chunk digests for its upload.
    fn digest(&self, name: &SafeName) -> std::io::Result<Option<LocalFile>> {
        let chunk_size = self.options.chunk_size;
        let Some((file, chunks)) = self.folder.digest_chunks(name, chunk_size)? else { return Ok(None) };
        if let Some(chunks) = chunks {
            let version = DigestedVersion { size: file.size, md5: file.md5, chunk_size };
            self.digest_cache().insert(name, version, chunks);
        }
        Ok(Some(file))
    }

    /// Refreshes what a watcher event at `path` may have changed: the file, or every file under a
    /// directory, and every known file under it (a directory removed or renamed away). Blocking.
    pub fn refresh_path(&self, path: &Path) {
        if self.folder.is_state(path) || !path.starts_with(self.folder.root()) {
            return;
        }
        let mut names = BTreeSet::new();
        let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if is_dir {
            match self.folder.scan(Some(path)) {
                Ok(found) => names.extend(found.into_iter().map(|(n, _)| n)),
                Err(e) => tracing::warn!("cannot scan {}: {e}", path.display()),
            }
        }
        let rel = path.strip_prefix(self.folder.root()).ok().and_then(|p| p.to_str()).unwrap_or("").to_string();
        if let Some(name) = self.folder.name_of(path) {
            names.insert(name);
        }
        if !rel.is_empty() {
            let prefix = format!("{rel}/");
            let inner = self.lock();
            names.extend(inner.metadata.keys().filter(|n| n.as_str().starts_with(&prefix)).cloned());
        } else {
            names.extend(self.lock().metadata.keys().cloned());
        }
        for name in names {
            self.refresh(&name, true);
        }
    }

    /// Refreshes the whole folder (at connect, or after the watcher lost events). Blocking.
    pub fn rescan(&self, mark: bool) {
        let mut names: BTreeSet<SafeName> = self.lock().metadata.keys().cloned().collect();
        match self.folder.scan(None) {
            Ok(found) => names.extend(found.into_iter().map(|(n, _)| n)),
            Err(e) => tracing::warn!("cannot scan {}: {e}", self.folder.root().display()),
        }
        for name in names {
            self.refresh(&name, mark);
        }
    }

    /// The next request to send.
    pub fn take_request(&self) -> Option<(SafeName, Md5Sum)> {
        self.lock().requests.pop_front()
    }

    /// The next upload or delete, decided from the metadata now.
    pub fn take_job(&self) -> Option<Job> {
        let mut inner = self.lock();
        loop {
            let name = inner.dirty.iter().find(|n| !inner.busy.contains(*n)).cloned()?;
            inner.dirty.remove(&name);
            let Some(entry) = inner.metadata.get(&name).copied() else { continue };
            let job = if entry.is_modified() {
                Job::Upload { name: name.clone() }
            } else if let (None, Some(synced)) = (entry.current, entry.synced) {
                Job::Delete { name: name.clone(), md5: synced.md5 }
            } else {
                continue;
            };
            inner.busy.insert(name);
            return Some(job);
        }
    }

    /// The server committed the upload of `name`, whose content had md5 `md5`; the upload read the
    /// version of `size` bytes and mtime `mtime_ns`. An undigested record of that version gets the md5.
    pub fn upload_done(&self, name: &SafeName, md5: Md5Sum, size: u64, mtime_ns: i64) {
        let mut inner = self.lock();
        inner.busy.remove(name);
        inner.retries.remove(name);
        let mut entry = inner.metadata.get(name).copied().unwrap_or(LocalEntry { current: None, synced: None });
        if let Some(file) = entry.current.as_mut()
            && file.is_undigested()
            && file.size == size
            && file.mtime_ns == mtime_ns
        {
            file.md5 = md5;
        }
        entry.synced = Some(Synced { md5, version: None });
        inner.metadata.insert(name.clone(), entry);
        inner.unsaved = true;
        // Changed (or deleted) while it was uploading: that goes next.
        if entry.is_modified() || entry.is_deleted_locally() {
            inner.dirty.insert(name.clone());
        }
        drop(inner);
        self.event(SyncEvent::Uploaded { name: name.clone(), size });
    }

    /// The server answered the Delete File of `name` with `status`.
    pub fn delete_done(&self, name: &SafeName, status: StatusCode) -> Option<Duration> {
        if !matches!(status, StatusCode::Ok | StatusCode::NoFileToDelete) {
            return self.job_failed(name, status);
        }
        let mut inner = self.lock();
        inner.busy.remove(name);
        inner.retries.remove(name);
        match inner.metadata.get(name).copied() {
            Some(entry) if entry.current.is_none() => {
                inner.metadata.remove(name);
            }
            Some(mut entry) => {
                // Created again meanwhile: the server has no file now, so this one is new there.
                entry.synced = None;
                inner.metadata.insert(name.clone(), entry);
                inner.dirty.insert(name.clone());
            }
            None => {}
        }
        inner.unsaved = true;
        drop(inner);
        if status == StatusCode::Ok {
            self.event(SyncEvent::DeletedThere { name: name.clone() });
        }
        None
    }

    /// The server refused an upload or delete of `name`. The seed's client gives up; this one keeps the
    /// change in its metadata and, a few times, tries again a little later (by then the newer version
    /// that caused a refusal has usually arrived and settled the matter). Returns the wait before the
    /// next try, if there is one.
    pub fn job_failed(&self, name: &SafeName, status: StatusCode) -> Option<Duration> {
        let mut inner = self.lock();
        inner.busy.remove(name);
        let tries = inner.retries.entry(name.clone()).or_insert(0);
        *tries += 1;
        let delay = (*tries <= MAX_RETRIES).then(|| RETRY_STEP * *tries);
        drop(inner);
        self.event(SyncEvent::Refused { name: name.clone(), status });
        delay
    }

    /// An upload was given up because the file changed while it was sent: the new version goes next.
    pub fn upload_abandoned(&self, name: &SafeName) {
        let mut inner = self.lock();
        inner.busy.remove(name);
        inner.dirty.insert(name.clone());
        drop(inner);
        self.wake();
    }

    /// Puts `name` back in line for the update connection (a retry).
    pub fn retry(&self, name: &SafeName) {
        self.lock().dirty.insert(name.clone());
        self.wake();
    }

    /// The connection ended: whatever was in flight is decided again at the next connect.
    pub fn session_ended(&self) {
        let mut inner = self.lock();
        inner.busy.clear();
        inner.requests.clear();
    }

    /// A file from the server arrived complete in `tmp`: keeps a local edit as a conflicted copy first,
    /// then moves the file into place and records it as in sync. Blocking. Returns the status to answer.
    pub fn apply_received(&self, name: &SafeName, tmp: &Path, md5: Md5Sum) -> StatusCode {
        // An edit the watcher has not reported yet must count too.
        self.refresh(name, false);
        let mut inner = self.lock();
        let entry = inner.metadata.get(name).copied();
        if entry.is_some_and(|e| e.needs_conflicted_copy(md5)) {
            let taken = |c: &SafeName| inner.metadata.contains_key(c) || self.folder.path(c).exists();
            let copy = match conflicted_copy_name(
                name,
                &self.client_id,
                unix_secs(),
                self.options.limits.max_name_len(),
                taken,
            ) {
                Ok(copy) => copy,
                Err(e) => {
                    tracing::warn!("keeping {name} as it is and refusing the server's version: {e}");
                    discard(tmp);
                    return StatusCode::FileInUse;
                }
            };
            if let Err(e) = self.folder.rename(name, &copy) {
                tracing::warn!("cannot keep {name} as {copy}: {e}; refusing the server's version");
                discard(tmp);
                return StatusCode::FileInUse;
            }
            if let Some(file) = entry.and_then(|e| e.current) {
                inner.metadata.insert(copy.clone(), LocalEntry::new_local(file));
                inner.dirty.insert(copy.clone());
            }
            if let Some(mut e) = entry {
                e.current = None;
                inner.metadata.insert(name.clone(), e);
            }
            inner.unsaved = true;
            self.event(SyncEvent::ConflictedCopy { name: name.clone(), copy });
        }
        match self.folder.install(tmp, name, md5) {
            Ok(file) => {
                inner.metadata.insert(name.clone(), LocalEntry::in_sync(file, None));
                inner.unsaved = true;
                drop(inner);
                self.wake();
                self.event(SyncEvent::Received { name: name.clone(), size: file.size });
                StatusCode::Ok
            }
            Err(e) => {
                tracing::warn!("cannot write {name}: {e}");
                discard(tmp);
                StatusCode::FileInUse
            }
        }
    }

    /// The server deleted `name`: delete it here too, unless it holds a local edit (modify beats
    /// delete: the edit goes to the server as a new file). Blocking.
    pub fn apply_delete(&self, name: &SafeName) -> StatusCode {
        self.refresh(name, false);
        let mut inner = self.lock();
        let Some(mut entry) = inner.metadata.get(name).copied() else { return StatusCode::NoFileToDelete };
        if entry.current.is_none() {
            inner.metadata.remove(name);
            inner.unsaved = true;
            return StatusCode::NoFileToDelete;
        }
        if entry.is_modified() {
            entry.synced = None;
            inner.metadata.insert(name.clone(), entry);
            inner.dirty.insert(name.clone());
            inner.unsaved = true;
            drop(inner);
            self.wake();
            return StatusCode::Ok;
        }
        match self.folder.remove(name) {
            Ok(_) => {
                inner.metadata.remove(name);
                inner.unsaved = true;
                drop(inner);
                self.event(SyncEvent::DeletedHere { name: name.clone() });
                StatusCode::Ok
            }
            Err(e) => {
                tracing::warn!("cannot delete {name}: {e}");
                StatusCode::FileInUse
            }
        }
    }

    /// Brings the folder and the server together after a connect (docs/sync-protocol.md §8). Blocking.
    pub fn apply_reconcile(&self, server: &Metadata) {
        let actions = {
            let mut inner = self.lock();
            inner.dirty.clear();
            inner.requests.clear();
            reconcile(&inner.metadata, server, &self.client_id, unix_secs(), self.options.limits.max_name_len())
        };
        for action in actions {
            match action {
                Action::Upload { name } | Action::SendDelete { name, .. } => {
                    self.lock().dirty.insert(name);
                }
                Action::RequestUpdate { name, md5 } => self.lock().requests.push_back((name, md5)),
                Action::KeepConflictedCopy { name, copy } => {
                    let mut inner = self.lock();
                    match self.folder.rename(&name, &copy) {
                        Ok(()) => {
                            if let Some(mut entry) = inner.metadata.get(&name).copied() {
                                if let Some(file) = entry.current.take() {
                                    inner.metadata.insert(copy.clone(), LocalEntry::new_local(file));
                                }
                                inner.metadata.insert(name.clone(), entry);
                            }
                            inner.unsaved = true;
                            drop(inner);
                            self.event(SyncEvent::ConflictedCopy { name, copy });
                        }
                        Err(e) => tracing::warn!("cannot keep {name} as {copy}: {e}"),
                    }
                }
                Action::DeleteLocal { name } => {
                    // Only if it is still the version the server deleted.
                    self.refresh(&name, false);
                    let mut inner = self.lock();
                    if inner.metadata.get(&name).is_some_and(|e| e.is_modified()) {
                        inner.dirty.insert(name);
                        continue;
                    }
                    match self.folder.remove(&name) {
                        Ok(_) => {
                            inner.metadata.remove(&name);
                            inner.unsaved = true;
                            drop(inner);
                            self.event(SyncEvent::DeletedHere { name });
                        }
                        Err(e) => tracing::warn!("cannot delete {name}: {e}"),
                    }
                }
                Action::RecordSynced { name, md5, version } => {
                    let mut inner = self.lock();
                    if let Some(entry) = inner.metadata.get_mut(&name) {
                        entry.synced = Some(Synced { md5, version: Some(version) });
                        inner.unsaved = true;
                    }
                }
                Action::Forget { name } => {
                    let mut inner = self.lock();
                    inner.metadata.remove(&name);
                    inner.unsaved = true;
                }
                Action::Hold { name, reason } => tracing::warn!("leaving {name} alone for now: {reason}"),
            }
        }
        self.wake();
    }

    /// Saves the metadata if it changed. Blocking.
    pub fn save(&self) {
        let snapshot = {
            let mut inner = self.lock();
            if !inner.unsaved {
                return;
            }
            inner.unsaved = false;
            inner.metadata.clone()
        };
        if let Err(e) = self.state.save(self.folder.root(), &snapshot) {
            tracing::warn!("cannot save the sync metadata: {e}");
            self.lock().unsaved = true;
        }
    }
}

fn discard(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A client's shared state on `dir`, with id `me`, for tests.
#[cfg(test)]
pub(crate) fn test_shared(dir: &Path, options: SyncOptions) -> Shared {
    let folder = Folder::open(dir, 1024, 1000).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let state = StateFiles::lock(folder.state_dir()).unwrap_or_else(|e| panic!("lock: {e}"));
    let id = ClientId::parse("me").unwrap_or_else(|e| panic!("{e}"));
    Shared::new(folder, state, id, LocalMetadata::new(), options, Arc::new(super::events::Silent))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{EntryState, MetaEntry};

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn shared(dir: &Path) -> Shared {
        test_shared(dir, SyncOptions::new("localhost", dir))
    }

    /// A file received from the server, in a temporary file.
    fn incoming(s: &Shared, data: &[u8]) -> std::path::PathBuf {
        let (tmp, _) = s.folder.temp_file().unwrap();
        std::fs::write(&tmp, data).unwrap();
        tmp
    }

    fn synced(s: &Shared, name: &str, data: &[u8]) {
        let tmp = incoming(s, data);
        assert_eq!(s.apply_received(&n(name), &tmp, Md5Sum::of(data)), StatusCode::Ok);
    }

    /// Rewrites a file so that its mtime surely moves.
    fn edit(path: &Path, data: &[u8]) {
        std::fs::write(path, data).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
    }

    #[test]
    fn a_new_file_is_uploaded_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        s.refresh(&n("f"), true);
        assert_eq!(s.take_job(), Some(Job::Upload { name: n("f") }));
        assert_eq!(s.take_job(), None, "busy while it uploads");
        s.upload_done(&n("f"), Md5Sum::of(b"hello"), 5, 0);
        s.refresh(&n("f"), true);
        assert_eq!(s.take_job(), None, "nothing changed since");
        assert!(!s.lock().metadata[&n("f")].is_modified());
    }

    #[test]
    fn a_large_new_file_is_uploaded_before_it_is_digested() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let data: Vec<u8> = (0..UPLOAD_UNDIGESTED_FROM as usize + 3).map(|i| (i * 7) as u8).collect();
        let path = dir.path().join("big");
        std::fs::write(&path, &data).unwrap();
        let mtime = mtime_ns(&std::fs::metadata(&path).unwrap());
        s.refresh(&n("big"), true);
        let recorded = s.lock().metadata[&n("big")].current.unwrap();
        assert!(recorded.is_undigested(), "recorded without a digest");
        assert_eq!(s.take_job(), Some(Job::Upload { name: n("big") }));
        // Watcher events while it uploads leave it alone: the upload digests it.
        s.refresh(&n("big"), true);
        assert!(s.lock().metadata[&n("big")].current.unwrap().is_undigested());
        s.upload_done(&n("big"), Md5Sum::of(&data), data.len() as u64, mtime);
        let entry = s.lock().metadata[&n("big")];
        assert_eq!(entry.current.unwrap().md5, Md5Sum::of(&data), "the upload's md5 is recorded");
        assert!(!entry.is_modified());
        assert_eq!(s.take_job(), None);
    }

    #[test]
    fn an_undigested_file_not_uploading_is_digested_at_the_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let data = vec![5u8; UPLOAD_UNDIGESTED_FROM as usize];
        std::fs::write(dir.path().join("big"), &data).unwrap();
        s.refresh(&n("big"), true);
        assert_eq!(s.take_job(), Some(Job::Upload { name: n("big") }));
        // The session ends before the upload is committed: a reconnect's rescan digests the file.
        s.session_ended();
        s.rescan(false);
        assert_eq!(s.lock().metadata[&n("big")].current.unwrap().md5, Md5Sum::of(&data));
        // An upload that read another version does not touch the record.
        s.upload_done(&n("big"), Md5Sum::of(b"other"), 5, 0);
        assert_eq!(s.lock().metadata[&n("big")].current.unwrap().md5, Md5Sum::of(&data));
    }

    #[test]
    fn a_received_file_is_not_sent_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        synced(&s, "d/f", b"from the server");
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"from the server");
        // The watcher reports the rename: the file is what the metadata says, nothing to send.
        s.refresh_path(&dir.path().canonicalize().unwrap().join("d"));
        assert_eq!(s.take_job(), None);
    }

    #[test]
    fn a_local_edit_is_kept_as_a_conflicted_copy() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        synced(&s, "notes.txt", b"v1");
        // Edited here, and the watcher has not said so yet.
        edit(&dir.path().join("notes.txt"), b"my edit");
        let tmp = incoming(&s, b"v2 from elsewhere");
        assert_eq!(s.apply_received(&n("notes.txt"), &tmp, Md5Sum::of(b"v2 from elsewhere")), StatusCode::Ok);
        assert_eq!(std::fs::read(dir.path().join("notes.txt")).unwrap(), b"v2 from elsewhere");
        let copies: Vec<String> = s
            .lock()
            .metadata
            .keys()
            .filter(|k| k.as_str().starts_with("notes (conflicted copy me "))
            .map(|k| k.to_string())
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(std::fs::read(dir.path().join(&copies[0])).unwrap(), b"my edit");
        assert_eq!(s.take_job(), Some(Job::Upload { name: n(&copies[0]) }), "the copy syncs like any file");
        assert_eq!(s.take_job(), None);
    }

    #[test]
    fn deletes_both_ways_and_modify_beats_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        synced(&s, "a/gone", b"x");
        synced(&s, "kept", b"y");
        // The server deleted a/gone, unchanged here: it goes, with its directory.
        assert_eq!(s.apply_delete(&n("a/gone")), StatusCode::Ok);
        assert!(!dir.path().join("a").exists());
        assert_eq!(s.apply_delete(&n("a/gone")), StatusCode::NoFileToDelete);
        // The server deleted kept, edited here: it stays and goes back as a new file.
        edit(&dir.path().join("kept"), b"edited");
        assert_eq!(s.apply_delete(&n("kept")), StatusCode::Ok);
        assert_eq!(std::fs::read(dir.path().join("kept")).unwrap(), b"edited");
        assert_eq!(s.take_job(), Some(Job::Upload { name: n("kept") }));
        s.upload_done(&n("kept"), Md5Sum::of(b"edited"), 6, 0);
        // Deleted here: a Delete File for the version the server has.
        std::fs::remove_file(dir.path().join("kept")).unwrap();
        s.refresh(&n("kept"), true);
        assert_eq!(s.take_job(), Some(Job::Delete { name: n("kept"), md5: Md5Sum::of(b"edited") }));
        assert_eq!(s.delete_done(&n("kept"), StatusCode::Ok), None);
        assert!(s.lock().metadata.is_empty());
    }

    #[test]
    fn refusals_are_retried_a_few_times() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let delays: Vec<_> = (0..MAX_RETRIES + 1).map(|_| s.job_failed(&n("f"), StatusCode::FileLocked)).collect();
        assert_eq!(delays[0], Some(RETRY_STEP));
        assert_eq!(delays[1], Some(RETRY_STEP * 2));
        assert_eq!(delays[MAX_RETRIES as usize], None);
    }

    #[test]
    fn reconciliation_requests_uploads_and_keeps_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        synced(&s, "both", b"v1");
        s.upload_done(&n("both"), Md5Sum::of(b"v1"), 2, 0);
        edit(&dir.path().join("both"), b"mine");
        std::fs::write(dir.path().join("only-here"), b"new").unwrap();
        s.rescan(false);
        let file = |data: &[u8], version| MetaEntry {
            version,
            mtime_ns: 1,
            state: EntryState::File { size: data.len() as u64, md5: Md5Sum::of(data) },
        };
        let server = Metadata {
            last_version: 3,
            entries: BTreeMap::from([(n("both"), file(b"theirs", 2)), (n("only-there"), file(b"t", 3))]),
        };
        s.apply_reconcile(&server);
        let mut requested = Vec::new();
        while let Some((name, _)) = s.take_request() {
            requested.push(name.to_string());
        }
        assert_eq!(requested, ["both", "only-there"]);
        let mut jobs = Vec::new();
        while let Some(job) = s.take_job() {
            jobs.push(job);
        }
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        assert!(jobs.contains(&Job::Upload { name: n("only-here") }));
        assert!(!dir.path().join("both").exists(), "the local edit moved aside for the server's version");
    }
}
