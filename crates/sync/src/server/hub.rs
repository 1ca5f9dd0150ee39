//! The state every sync connection shares: the file roster with its locks, the client table with each
//! client's queue, and the authoritative files under `<data>/sync/`.
//!
//! ```text
//! <data>/sync/files/         the synced tree (names confined to it by ferry-files)
//! <data>/sync/uploads/       partial uploads, <id>.part, renamed into files/ when finished
//! <data>/sync/META-DATA      the roster (the wire's META-DATA encoding), replaced atomically
//! <data>/sync/handover.json  the client queues, only while a live upgrade hands them over
//! ```
//!
//! A live upgrade carries the shared state through the disk rather than in session states: the old
//! process writes the roster and the queues in `prepare_handover` (after every session has parked, so
//! nothing changes any more), and the new process reads both in `catch_up`, before any session
//! resumes. The queues are fed by every client's commits, so they must exist in the new process before
//! the first resumed session can commit anything; a session state only carries its own connection's
//! progress (uploads in progress, the file being pushed).

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::config::SyncConfig;
use ferry_files::{FileStore, SafeName, StoreError};

use super::client_table::{ClientTable, ConnSlot, SavedClient};
use super::relay::{RelayBudget, RelayOutcome, RelaySource, RelayTap};
use super::roster_file::{RosterFile, RosterFileError};
use super::staged_upload::{StagedUpload, clear_dir};
use crate::chunk_digests::{ChunkDigests, DigestCache, DigestedVersion};
use crate::{ClientId, EntryState, LeaseKind, Limits, Md5Sum, Metadata, Roster, StatusCode, UpdateKind};

/// How long a client entry may have no connection before it is dropped (sessions that did not come
/// back after a live upgrade).
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How often orphaned client entries are looked for.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Largest handover file read.
const MAX_HANDOVER_BYTES: u64 = 256 << 20;
/// The lease holder the server uses for its own changes (the rescan at start).
const SERVER_ID: &str = "ferry-server";

/// The sync service's settings, from `[sync]` in the config.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub limits: Limits,
    pub max_clients: usize,
    pub max_uploads: usize,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub lease_timeout: Duration,
    /// Bytes of relayed chunks one receiving client may have waiting.
    pub relay_per_client: usize,
    /// Bytes of relayed chunks waiting in all relays at once.
    pub relay_total: usize,
}

impl HubConfig {
    pub fn from_config(c: &SyncConfig) -> HubConfig {
        HubConfig {
            limits: Limits {
                max_name_len: c.max_name_len,
                max_chunk_size: c.max_chunk_size,
                max_metadata_entries: c.max_metadata_entries,
                max_metadata_bytes: c.max_metadata_bytes,
                max_file_size: c.max_file_size,
            },
            max_clients: c.max_clients,
            max_uploads: c.max_uploads_per_client,
            keepalive: Duration::from_secs(c.keepalive_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            lease_timeout: Duration::from_secs(c.lease_timeout_secs),
            relay_per_client: usize::try_from(c.relay_per_client_bytes).unwrap_or(usize::MAX),
            relay_total: usize::try_from(c.relay_total_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// Why the sync state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid sync limits: {0}")]
    Limits(#[from] crate::wire::LimitsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Roster(#[from] RosterFileError),
    #[error("the saved roster does not fit the limits: {0}")]
    RosterLimits(#[from] crate::RosterError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> HubError {
    let context = context.into();
    move |source| HubError::Io { context, source }
}

/// The sync service's shared state.
pub struct SyncHub {
    pub(crate) config: HubConfig,
    pub(crate) store: FileStore,
    roster: Mutex<Roster>,
    clients: Mutex<ClientTable>,
    /// The chunk digests of committed uploads, for their pushes.
    digests: Mutex<DigestCache>,
    roster_file: RosterFile,
    handover_file: PathBuf,
    next_conn_id: AtomicU64,
    next_relay_id: AtomicU64,
    /// Bytes of relayed chunks all relays may have queued at once.
    relay_budget: RelayBudget,
    /// Set between `prepare_handover` and a rollback: nothing may change the shared state.
    handed_over: AtomicBool,
}

impl SyncHub {
    /// Opens `<dir>` (`<data>/sync`). A `fresh` start (not a live upgrade) also rescans the files
    /// against the saved roster, drops partial uploads left by a crash, and saves the result; a live
    /// upgrade's new process only reads, and takes the state over in [`SyncHub::catch_up`].
    /// Blocking: call it before serving, or from a blocking thread.
    pub fn open(dir: &Path, config: HubConfig, fresh: bool) -> Result<Arc<SyncHub>, HubError> {
        config.limits.validate()?;
        let uploads = dir.join("uploads");
        let store = FileStore::open(&dir.join("files"), &uploads)?;
        let roster_file = RosterFile::new(dir.join("META-DATA"), config.limits);
        let saved = match roster_file.load() {
            Ok(saved) => saved,
            Err(e @ RosterFileError::Corrupt { .. }) if fresh => {
                let aside = roster_file.set_aside().map_err(io_err("cannot set the damaged roster aside"))?;
                tracing::error!("{e}; kept as {} and rebuilt from the files", aside.display());
                None
            }
            Err(e) => return Err(e.into()),
        };
        let roster = match saved {
            Some(metadata) => Roster::from_metadata(metadata, &config.limits)?,
            None => Roster::new(&config.limits),
        };
        let clients = ClientTable::new(config.max_clients, config.limits.max_metadata_entries as usize);
        let hub = SyncHub {
            store,
            roster: Mutex::new(roster),
            clients: Mutex::new(clients),
            digests: Mutex::new(DigestCache::new()),
            roster_file,
            handover_file: dir.join("handover.json"),
            next_conn_id: AtomicU64::new(rand::random::<u64>() >> 16),
            next_relay_id: AtomicU64::new(1),
            relay_budget: RelayBudget::new(config.relay_total),
            handed_over: AtomicBool::new(false),
            config,
        };
        if fresh {
            let removed = clear_dir(&uploads).map_err(io_err(format!("cannot clear {}", uploads.display())))?;
            if removed > 0 {
                tracing::info!("sync: removed {removed} partial uploads of clients that are gone");
            }
            let _ = std::fs::remove_file(&hub.handover_file);
            let changed = hub.rescan()?;
            if changed > 0 {
                tracing::info!("sync: {changed} files changed on disk since the roster was saved");
            }
            hub.roster_file.force(&hub.roster).map_err(io_err("cannot save the sync roster"))?;
        }
        Ok(Arc::new(hub))
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub fn store(&self) -> &FileStore {
        &self.store
    }

    pub(crate) fn roster(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn clients(&self) -> MutexGuard<'_, ClientTable> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection id (unique within this process and, being random-based, across upgrades).
    /// Keeps the verified chunk digests of an upload of `name` with content `version`.
    pub(crate) fn keep_digests(&self, name: &SafeName, version: DigestedVersion, digests: ChunkDigests) {
        self.digests.lock().unwrap_or_else(|p| p.into_inner()).insert(name, version, digests);
    }

    /// The chunk digests of `name`'s content `version`, if an upload left them.
    pub(crate) fn digests(&self, name: &SafeName, version: DigestedVersion) -> Option<Arc<ChunkDigests>> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner()).get(name, version)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn uploads_dir(&self) -> &Path {
        self.store.uploads_dir()
    }

    /// The roster's committed state, as a client is sent it.
    pub fn metadata(&self) -> Metadata {
        self.roster().snapshot()
    }

    /// Brings the roster in line with the files on disk: files changed or added while the server was
    /// down (or committed just before a crash, ahead of the roster) get a new version, files gone get
    /// a tombstone. Unchanged files (same size and mtime) are not read. Returns how many changed.
    fn rescan(&self) -> Result<usize, HubError> {
        let max = self.config.limits.max_metadata_entries as usize;
        let listed = self.store.list(max)?;
        let server = ClientId::parse(SERVER_ID).map_err(|e| io_err("server id")(io::Error::other(e)))?;
        let snapshot = self.metadata();
        let mut seen = BTreeSet::new();
        let mut changed = 0;
        for file in listed {
            let Ok(name) = SafeName::parse(&file.name, self.config.limits.max_name_len()) else { continue };
            let path = self.store.root().join(name.as_str());
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let mtime_ns = mtime_ns(&meta);
            seen.insert(name.clone());
            let known = snapshot.entries.get(&name).and_then(|e| match e.state {
                EntryState::File { size, md5 } => Some((size, md5, e.mtime_ns)),
                EntryState::Deleted => None,
            });
            if known.is_some_and(|(size, _, mtime)| size == meta.len() && mtime == mtime_ns) {
                continue;
            }
            let md5 = md5_file(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
            let mut roster = self.roster();
            if let Err(refusal) = roster.acquire(&name, &server, LeaseKind::Update) {
                tracing::warn!("sync: cannot track {name}: {refusal}");
                continue;
            }
            if let Err(e) = roster.commit_update(&name, &server, meta.len(), md5, mtime_ns) {
                tracing::error!("sync: {e}");
                continue;
            }
            changed += 1;
        }
        for (name, entry) in &snapshot.entries {
            if entry.is_deleted() || seen.contains(name) {
                continue;
            }
            let mut roster = self.roster();
            if roster.acquire(name, &server, LeaseKind::Delete).is_ok() {
                if let Err(e) = roster.commit_delete(name, &server, now_ns()) {
                    tracing::error!("sync: {e}");
                }
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Takes the lock on `name` for `client`, or says why not: another client holds it, there is no
    /// file to delete, the roster is full, or a newer version of the file is on its way to this client
    /// (its change was based on an older one: see [`ClientTable::is_pending`]).
    pub(crate) fn acquire(&self, name: &SafeName, client: &ClientId, kind: LeaseKind) -> Result<(), StatusCode> {
        let mut roster = self.roster();
        if self.clients().is_pending(client, name) {
            return Err(StatusCode::FileLocked);
        }
        roster.acquire(name, client, kind).map_err(|refusal| refusal.status())
    }

    /// Gives up `client`'s lock on `name` without committing.
    pub(crate) fn release(&self, name: &SafeName, client: &ClientId) {
        self.roster().release(name, client);
    }

    /// Starts relaying `client`'s upload of `name` to the other clients whose push connections are
    /// idle (see [`super::relay`]). `None` if none is.
    pub(crate) fn open_relay(&self, client: &ClientId, name: &SafeName) -> Option<RelaySource> {
        let id = self.next_relay_id.fetch_add(1, Ordering::Relaxed);
        let mut source = RelaySource::new(id, name.clone(), self.config.relay_per_client, self.relay_budget.clone());
        let offered = self.clients().offer_relay(client, name, &mut source);
        (offered > 0).then_some(source)
    }

    /// `client`'s push connection lets go of `tap` before the push is done (it parks, closes, or the
    /// client refused the file). If the upload was committed meanwhile (the commit did not queue the
    /// file for this client) and `requeue`, the file is queued for it now, to be pushed the usual
    /// way. Decided under the client table's lock, as the commit is.
    pub(crate) fn abandon_relay(&self, client: &ClientId, tap: &RelayTap, requeue: bool) {
        let mut clients = self.clients();
        if !clients.end_relay(client, tap.id, false) || !requeue {
            return;
        }
        if let RelayOutcome::Committed { version, .. } = tap.outcome()
            && !clients.enqueue(client, &tap.name, version, UpdateKind::Write)
        {
            tracing::warn!(client = %client, "sync: cannot queue {} after its relay ended", tap.name);
        }
    }

    /// `client`'s push connection carries a relayed push on from the committed file.
    pub(crate) fn relay_to_push(&self, client: &ClientId, tap: &RelayTap) {
        self.clients().end_relay(client, tap.id, true);
    }

    /// The relay tap offered to `client`'s push connection, if any.
    pub(crate) fn take_relay(&self, client: &ClientId) -> Option<RelayTap> {
        self.clients().take_relay(client)
    }

    /// Commits a finished upload: renames the staged file into place (durably), records the new
    /// version, queues it for every other client (but those its `relay` carries it to, which learn of
    /// the commit instead) and saves the roster. Blocking. The lock is released whatever happens; a
    /// relay not committed is aborted when dropped.
    pub(crate) fn commit_upload(
        &self,
        client: &ClientId,
        name: &SafeName,
        staged: &StagedUpload,
        size: u64,
        md5: Md5Sum,
        relay: Option<RelaySource>,
    ) -> StatusCode {
        let committed = self.store.commit(&staged.path, name).and_then(|_| {
            let path = self.store.resolve(name)?;
            std::fs::metadata(&path).map_err(|e| StoreError::Io { context: format!("stat {name}"), source: e })
        });
        let meta = match committed {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(client = %client, "sync: cannot store {name}: {e}");
                staged.discard();
                self.release(name, client);
                return StatusCode::FileInUse;
            }
        };
        if meta.len() != size {
            // Only an outside writer under the synced tree could do this; the roster must not lie.
            tracing::error!("sync: {name} is {} bytes on disk right after committing {size}", meta.len());
        }
        let overflowed = {
            let mut roster = self.roster();
            let mtime = mtime_ns(&meta);
            match roster.commit_update(name, client, size, md5, mtime) {
                Ok(entry) => {
                    let mut clients = self.clients();
                    let relayed = relay.as_ref().map(RelaySource::id);
                    let overflowed = clients.enqueue_others(client, name, entry.version, UpdateKind::Write, relayed);
                    if let Some(relay) = relay {
                        relay.commit(entry.version, size, md5, mtime);
                    }
                    tracing::debug!(client = %client, "sync: committed {name} ({size} bytes, version {})", entry.version);
                    overflowed
                }
                Err(e) => {
                    // The lock was lost (the client's session was replaced meanwhile); the file is in
                    // place and the rescan at the next start records it.
                    tracing::error!("sync: {e}");
                    return StatusCode::FileInUse;
                }
            }
        };
        end_connections(overflowed);
        self.persist();
        StatusCode::Ok
    }

    /// Carries out a Delete File `client` holds the delete lock for: removes the file, records the
    /// tombstone, queues the delete for every other client and saves the roster. Blocking.
    pub(crate) fn commit_delete(&self, client: &ClientId, name: &SafeName) -> StatusCode {
        match self.store.remove(name) {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(client = %client, "sync: cannot delete {name}: {e}");
                self.release(name, client);
                return StatusCode::FileInUse;
            }
        }
        prune_empty_dirs(self.store.root(), name);
        let overflowed = {
            let mut roster = self.roster();
            match roster.commit_delete(name, client, now_ns()) {
                Ok(entry) => self.clients().enqueue_others(client, name, entry.version, UpdateKind::Delete, None),
                Err(e) => {
                    tracing::error!("sync: {e}");
                    return StatusCode::FileInUse;
                }
            }
        };
        end_connections(overflowed);
        self.persist();
        StatusCode::Ok
    }

    /// Saves the roster if it changed (group commit; blocking). A failure is logged: the files are in
    /// place, and the rescan at the next start brings the roster in line.
    fn persist(&self) {
        if let Err(e) = self.roster_file.persist(&self.roster) {
            tracing::error!("sync: cannot save the roster to {}: {e}", self.roster_file.path().display());
        }
    }

    /// A client's connection ended: if it was the client's current one, the client is gone (its other
    /// connection is ended and every lock it held released).
    pub(crate) fn connection_ended(&self, client: &ClientId, role: crate::Role, conn_id: u64) {
        let other = self.clients().detach(client, role, conn_id);
        if let Some(other) = other {
            if let Some(other) = other {
                other.cancel.cancel();
            }
            let released = self.roster().release_all(client);
            if !released.is_empty() {
                tracing::info!(client = %client, "sync: released {} locks of a client that left", released.len());
            }
        }
    }

    /// Ends every connection in `slots` (connections a new hello replaced) and releases the locks of
    /// `client` (they belonged to the replaced session).
    pub(crate) fn replace_session(&self, client: &ClientId, slots: Vec<ConnSlot>) {
        if slots.is_empty() {
            return;
        }
        end_connections(slots);
        self.roster().release_all(client);
    }

    /// Old process of a live upgrade: every session has parked. Saves the roster and the queues for
    /// the new process.
    pub fn prepare_handover(&self) -> Result<(), String> {
        self.handed_over.store(true, Ordering::SeqCst);
        self.roster_file.force(&self.roster).map_err(|e| format!("cannot save the sync roster: {e}"))?;
        let saved = self.clients().export();
        let json = serde_json::to_vec(&saved).map_err(|e| format!("cannot encode the sync queues: {e}"))?;
        ferry_files::write_atomic(&self.handover_file, &json)
            .map_err(|e| format!("cannot write {}: {e}", self.handover_file.display()))
    }

    /// Old process: the upgrade rolled back; the state in memory is still current.
    pub fn resume_after_rollback(&self) {
        self.handed_over.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.handover_file);
    }

    /// New process of a live upgrade: takes over the roster and the queues the old process saved.
    pub fn catch_up(&self) -> Result<(), String> {
        let metadata = self.roster_file.load().map_err(|e| e.to_string())?.unwrap_or_default();
        let roster = Roster::from_metadata(metadata, &self.config.limits).map_err(|e| e.to_string())?;
        *self.roster() = roster;
        let saved = match std::fs::File::open(&self.handover_file) {
            Ok(file) => {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut io::Read::take(file, MAX_HANDOVER_BYTES), &mut bytes)
                    .map_err(|e| format!("cannot read {}: {e}", self.handover_file.display()))?;
                serde_json::from_slice::<Vec<SavedClient>>(&bytes)
                    .map_err(|e| format!("cannot decode {}: {e}", self.handover_file.display()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot open {}: {e}", self.handover_file.display())),
        };
        self.clients().import(saved, self.config.limits.max_name_len());
        let _ = std::fs::remove_file(&self.handover_file);
        Ok(())
    }

    /// Starts the background task that drops client entries no connection came back to.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HOUSEKEEPING).await;
                let Some(hub) = hub.upgrade() else { return };
                if hub.handed_over.load(Ordering::SeqCst) {
                    continue;
                }
                let gone = hub.clients().reap(ORPHAN_GRACE);
                for client in gone {
                    let released = hub.roster().release_all(&client);
                    tracing::info!(client = %client, "sync: dropped a client that did not come back ({} locks)", released.len());
                }
            }
        });
    }
}

fn end_connections(slots: Vec<ConnSlot>) {
    for slot in slots {
        slot.cancel.cancel();
    }
}

/// A file's mtime in nanoseconds since the epoch.
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The md5 of a whole file, read in pieces.
pub(crate) fn md5_file(path: &Path) -> io::Result<Md5Sum> {
    use md5::{Digest, Md5};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(Md5Sum(hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Removes the directories `name`'s removal left empty, up to (not including) `root`.
pub(crate) fn prune_empty_dirs(root: &Path, name: &SafeName) {
    let mut dir = root.join(name.as_str());
    while let Some(parent) = dir.parent() {
        if parent == root || !parent.starts_with(root) {
            return;
        }
        // Fails (and stops) on the first directory that is not empty.
        if std::fs::remove_dir(parent).is_err() {
            return;
        }
        dir = parent.to_path_buf();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HubConfig {
        HubConfig::from_config(&SyncConfig::default())
    }

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    #[test]
    fn a_fresh_start_records_the_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("files/d")).unwrap();
        std::fs::write(dir.path().join("files/d/a.txt"), b"hello").unwrap();
        std::fs::create_dir_all(dir.path().join("uploads")).unwrap();
        std::fs::write(dir.path().join("uploads/0000000000000001.part"), b"half").unwrap();
        let hub = SyncHub::open(dir.path(), config(), true).unwrap();
        let meta = hub.metadata();
        let entry = meta.entries.get(&n("d/a.txt")).unwrap();
        assert_eq!(entry.md5(), Some(Md5Sum::of(b"hello")));
        assert!(!dir.path().join("uploads/0000000000000001.part").exists(), "partial uploads are dropped");
        drop(hub);

        // Unchanged: same version after a restart. Changed and removed files are noticed.
        let hub = SyncHub::open(dir.path(), config(), true).unwrap();
        assert_eq!(hub.metadata(), meta);
        drop(hub);
        std::fs::write(dir.path().join("files/d/a.txt"), b"changed").unwrap();
        std::fs::write(dir.path().join("files/new"), b"n").unwrap();
        let hub = SyncHub::open(dir.path(), config(), true).unwrap();
        let after = hub.metadata();
        let a = after.entries.get(&n("d/a.txt")).unwrap();
        assert_eq!(a.md5(), Some(Md5Sum::of(b"changed")));
        assert!(a.version > entry.version);
        assert!(after.entries.contains_key(&n("new")));
        drop(hub);
        std::fs::remove_file(dir.path().join("files/new")).unwrap();
        let hub = SyncHub::open(dir.path(), config(), true).unwrap();
        assert!(hub.metadata().entries.get(&n("new")).unwrap().is_deleted());
    }

    #[test]
    fn commits_and_deletes_reach_disk_roster_and_queues() {
        let dir = tempfile::tempdir().unwrap();
        let hub = SyncHub::open(dir.path(), config(), true).unwrap();
        let (a, b) = (ClientId::parse("a").unwrap(), ClientId::parse("b").unwrap());
        let slot = |id| ConnSlot { id, cancel: tokio_util::sync::CancellationToken::new() };
        hub.clients().start_session(&a, slot(1)).unwrap();
        hub.clients().start_session(&b, slot(2)).unwrap();

        hub.acquire(&n("x/f"), &a, LeaseKind::Update).unwrap();
        assert_eq!(hub.acquire(&n("x/f"), &b, LeaseKind::Update), Err(StatusCode::FileLocked));
        let staged = StagedUpload::create(hub.uploads_dir()).unwrap();
        staged.write_at(b"data", 0).unwrap();
        assert_eq!(hub.commit_upload(&a, &n("x/f"), &staged, 4, Md5Sum::of(b"data"), None), StatusCode::Ok);
        assert_eq!(std::fs::read(dir.path().join("files/x/f")).unwrap(), b"data");
        assert!(hub.clients().is_pending(&b, &n("x/f")));
        // b's change of x/f was based on the version before: refused until b has received it.
        assert_eq!(hub.acquire(&n("x/f"), &b, LeaseKind::Delete), Err(StatusCode::FileLocked));
        // The roster on disk has the commit.
        let saved = RosterFile::new(dir.path().join("META-DATA"), Limits::default()).load().unwrap().unwrap();
        assert_eq!(saved, hub.metadata());

        hub.acquire(&n("x/f"), &a, LeaseKind::Delete).unwrap();
        assert_eq!(hub.commit_delete(&a, &n("x/f")), StatusCode::Ok);
        assert!(!dir.path().join("files/x").exists(), "the emptied directory goes too");
        assert!(hub.metadata().entries.get(&n("x/f")).unwrap().is_deleted());
        assert_eq!(hub.acquire(&n("x/f"), &a, LeaseKind::Delete), Err(StatusCode::NoFileToDelete));
    }

    #[test]
    fn handover_carries_roster_and_queues() {
        let dir = tempfile::tempdir().unwrap();
        let old = SyncHub::open(dir.path(), config(), true).unwrap();
        let (a, b) = (ClientId::parse("a").unwrap(), ClientId::parse("b").unwrap());
        let slot = |id| ConnSlot { id, cancel: tokio_util::sync::CancellationToken::new() };
        old.clients().start_session(&a, slot(1)).unwrap();
        old.clients().start_session(&b, slot(2)).unwrap();
        // The new process opens while the old one still serves...
        let new = SyncHub::open(dir.path(), config(), false).unwrap();
        old.acquire(&n("f"), &a, LeaseKind::Update).unwrap();
        let staged = StagedUpload::create(old.uploads_dir()).unwrap();
        assert_eq!(old.commit_upload(&a, &n("f"), &staged, 0, Md5Sum::EMPTY, None), StatusCode::Ok);
        // ...and takes over once the old one has stopped.
        old.prepare_handover().unwrap();
        new.catch_up().unwrap();
        assert_eq!(new.metadata(), old.metadata());
        assert!(new.clients().is_pending(&b, &n("f")));
        assert!(!dir.path().join("handover.json").exists());
    }
}
