//! The node's disk side: one thread that applies, in order, what the feed
//! sends (begin, bytes, commit, abort, delete) to the backup directory and
//! answers with confirmations.
//!
//! One thread, because order is the point: the node must commit a name's
//! versions in the order the server sent their `BACKUPDONE`, and a commit
//! must come after the bytes it covers. The connection task hands it work
//! through a bounded channel, so a slow disk slows the socket (and the
//! server's queue for this node) instead of filling memory here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_files::{SafeName, StoreError};
use tokio::sync::mpsc;

use super::aligned_block::PooledBlock;
use super::block_writes::BlockWrites;
use super::direct_file::{MAX_DIRECT_FILES, SequentialFile};
use super::manifest::{Entry, Manifest};
use super::node_dir::BackupDir;
use crate::backup::MAX_OPEN_TRANSFERS;
use crate::backup::held::Held;
use crate::error_code::ErrorCode;

/// Work items in flight to the thread (each at most one frame's bytes).
pub(super) const OPS_DEPTH: usize = 32;
/// Longest name a node accepts (the server's own limit is at most this).
const MAX_NAME_BYTES: usize = 4096;
/// While commits keep coming, the manifest is saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(5);

pub(super) enum Op {
    /// Bring the manifest up to date and answer with the inventory.
    Inventory {
        max_files: usize,
    },
    Begin {
        transfer: u64,
        name: String,
        size: Option<u64>,
    },
    Data {
        transfer: u64,
        offset: u64,
        data: Bytes,
    },
    /// Bytes received straight into an aligned block: written from it
    /// without a copy where `O_DIRECT` allows.
    Block {
        transfer: u64,
        offset: u64,
        block: PooledBlock,
    },
    Done {
        transfer: u64,
        size: u64,
        blake3: String,
        etag: String,
    },
    Abort {
        transfer: u64,
    },
    /// The connection ended or paused: forget every unfinished transfer.
    AbortAll,
    Delete {
        transfer: u64,
        name: String,
    },
    /// Save the manifest if it changed.
    Flush,
}

pub(super) enum Reply {
    Inventory(Result<Vec<(String, Held)>, String>),
    /// Committed (`blake3` set) or deleted.
    Confirm {
        transfer: u64,
        name: String,
        size: u64,
        blake3: Option<String>,
    },
    Failed {
        transfer: u64,
        name: String,
        why: String,
    },
    /// The server broke the protocol; the connection must end.
    Fatal(ErrorCode, String),
}

/// A transfer being received.
struct Open {
    name: SafeName,
    size: Option<u64>,
    path: PathBuf,
    /// `None` once writing failed; the failure is reported at the commit.
    file: Option<SequentialFile>,
    written: u64,
    hasher: blake3::Hasher,
    error: Option<String>,
}

/// The thread and its channels.
pub(super) struct Writer {
    pub ops: mpsc::Sender<Op>,
    pub replies: mpsc::Receiver<Reply>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(dir: BackupDir) -> Result<Writer, String> {
        let (ops, ops_rx) = mpsc::channel(OPS_DEPTH);
        // Every op makes at most one reply and the connection task drains
        // replies before each op it sends: this never fills.
        let (replies_tx, replies) = mpsc::channel(2 * OPS_DEPTH + 16);
        let manifest = Manifest::load(&dir.manifest_path());
        let disk = BlockWrites::start().map_err(|e| format!("cannot start the disk threads: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("ferry-backup-writer".into())
            .spawn(move || {
                let mut state =
                    State { dir, manifest, dirty: false, saved: Instant::now(), open: HashMap::new(), disk };
                state.serve(ops_rx, replies_tx);
            })
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        Ok(Writer { ops, replies, thread: Some(thread) })
    }

    /// Ends the thread after it has saved the manifest.
    pub async fn stop(mut self) {
        drop(self.ops);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

struct State {
    dir: BackupDir,
    manifest: Manifest,
    dirty: bool,
    saved: Instant,
    open: HashMap<u64, Open>,
    /// Whole blocks are written on these threads, two at a time.
    disk: BlockWrites,
}

/// Bytes appended to a transfer.
enum Piece<'a> {
    /// A frame's bytes (copied into the file's gathering block, or written
    /// buffered).
    Bytes(&'a [u8]),
    /// A block the connection received straight into: written from where
    /// it lies, by the disk threads when it is whole and aligned.
    Block(PooledBlock),
}

impl State {
    fn serve(&mut self, mut ops: mpsc::Receiver<Op>, replies: mpsc::Sender<Reply>) {
        while let Some(op) = ops.blocking_recv() {
            if let Some(reply) = self.apply(op)
                && replies.blocking_send(reply).is_err()
            {
                break;
            }
            if self.dirty && self.saved.elapsed() >= SAVE_EVERY {
                self.save();
            }
        }
        self.abort_all();
        self.save();
    }

    fn save(&mut self) {
        if !self.dirty {
            return;
        }
        match self.manifest.save(&self.dir.manifest_path()) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("cannot save the backup manifest: {e}"),
        }
        self.saved = Instant::now();
    }

    fn abort_all(&mut self) {
        for (_, open) in self.open.drain() {
            drop(open.file);
            let _ = std::fs::remove_file(&open.path);
        }
    }

    fn apply(&mut self, op: Op) -> Option<Reply> {
        match op {
            Op::Inventory { max_files } => {
                let result = self.manifest.refresh(&self.dir.store, max_files).map(|()| self.manifest.inventory());
                self.dirty = true;
                self.save();
                Some(Reply::Inventory(result))
            }
            Op::Begin { transfer, name, size } => self.begin(transfer, name, size),
            Op::Data { transfer, offset, data } => self.data(transfer, offset, Piece::Bytes(&data)),
            // The block goes back to the pool once written.
            Op::Block { transfer, offset, block } => self.data(transfer, offset, Piece::Block(block)),
            Op::Done { transfer, size, blake3, etag } => Some(self.done(transfer, size, &blake3, etag)),
            Op::Abort { transfer } => {
                if let Some(open) = self.open.remove(&transfer) {
                    drop(open.file);
                    let _ = std::fs::remove_file(&open.path);
                }
                None
            }
            Op::AbortAll => {
                self.abort_all();
                None
            }
            Op::Delete { transfer, name } => Some(self.delete(transfer, name)),
            Op::Flush => {
                self.save();
                None
            }
        }
    }

    fn begin(&mut self, transfer: u64, name: String, size: Option<u64>) -> Option<Reply> {
        let name = match SafeName::parse(&name, MAX_NAME_BYTES) {
            Ok(name) => name,
            Err(e) => return Some(Reply::Fatal(ErrorCode::BadName, e.to_string())),
        };
        if self.open.contains_key(&transfer) {
            return Some(Reply::Fatal(ErrorCode::BadCommand, format!("transfer {transfer} begun twice")));
        }
        if self.open.len() >= MAX_OPEN_TRANSFERS {
            let msg = format!("more than {MAX_OPEN_TRANSFERS} transfers open at once");
            return Some(Reply::Fatal(ErrorCode::BadCommand, msg));
        }
        let path = self.dir.incoming(transfer);
        // Every open transfer could hold an O_DIRECT block: the first few
        // get one, the rest are written buffered.
        let direct = self.open.values().filter(|o| o.file.as_ref().is_some_and(SequentialFile::is_direct)).count()
            < MAX_DIRECT_FILES;
        let (file, error) = match SequentialFile::create(&path, direct) {
            Ok(file) => (Some(file), None),
            Err(e) => (None, Some(format!("cannot create {}: {e}", path.display()))),
        };
        let open = Open { name, size, path, file, written: 0, hasher: blake3::Hasher::new(), error };
        self.open.insert(transfer, open);
        None
    }

    /// Appends bytes to a transfer. They are hashed here, in order, before a
    /// block goes to the disk threads.
    fn data(&mut self, transfer: u64, offset: u64, piece: Piece<'_>) -> Option<Reply> {
        let data: &[u8] = match &piece {
            Piece::Bytes(data) => data,
            Piece::Block(block) => block.filled(),
        };
        let Some(open) = self.open.get_mut(&transfer) else {
            return Some(Reply::Fatal(ErrorCode::BadCommand, format!("BACKUPDATA for unknown transfer {transfer}")));
        };
        if offset != open.written {
            let msg = format!("BACKUPDATA of transfer {transfer} at offset {offset}, expected {}", open.written);
            return Some(Reply::Fatal(ErrorCode::BadOffset, msg));
        }
        let end = open.written + data.len() as u64;
        if open.size.is_some_and(|size| end > size) {
            let msg = format!("transfer {transfer} passes its size of {} bytes", open.size.unwrap_or(0));
            return Some(Reply::Fatal(ErrorCode::TooLarge, msg));
        }
        open.hasher.update(data);
        open.written = end;
        let written = match (&mut open.file, piece) {
            (Some(file), Piece::Block(block)) => file.write_block_from(block, &self.disk),
            (Some(file), Piece::Bytes(data)) => file.write(data),
            (None, _) => Ok(()),
        };
        if let Err(e) = written {
            open.error = Some(format!("cannot write {}: {e}", open.path.display()));
            open.file = None;
        }
        None
    }

    fn done(&mut self, transfer: u64, size: u64, blake3: &str, etag: String) -> Reply {
        let Some(mut open) = self.open.remove(&transfer) else {
            return Reply::Fatal(ErrorCode::BadCommand, format!("BACKUPDONE for unknown transfer {transfer}"));
        };
        let name = open.name.as_str().to_string();
        // The last partial block reaches the file before it is committed.
        if let Some(file) = open.file.take()
            && let Err(e) = file.finish()
        {
            open.error = Some(format!("cannot write {}: {e}", open.path.display()));
        }
        let failed = |why: String| {
            let _ = std::fs::remove_file(&open.path);
            Reply::Failed { transfer, name: name.clone(), why }
        };
        if let Some(error) = &open.error {
            return failed(error.clone());
        }
        if open.written != size || open.size.is_some_and(|s| s != size) {
            return failed(format!("received {} bytes, BACKUPDONE says {size}", open.written));
        }
        let digest = open.hasher.finalize().to_hex().to_string();
        if digest != blake3 {
            return failed(format!("received data hashes to {digest}, BACKUPDONE says {blake3}"));
        }
        let meta = match self.dir.store.commit(&open.path, &open.name) {
            Ok(meta) => meta,
            Err(e) => return failed(format!("cannot store {name}: {e}")),
        };
        let entry = Entry { size, blake3: digest.clone(), local: meta.etag.to_string(), etag: Some(etag) };
        self.manifest.files.insert(name.clone(), entry);
        self.dirty = true;
        Reply::Confirm { transfer, name, size, blake3: Some(digest) }
    }

    fn delete(&mut self, transfer: u64, name: String) -> Reply {
        let safe = match SafeName::parse(&name, MAX_NAME_BYTES) {
            Ok(name) => name,
            Err(e) => return Reply::Fatal(ErrorCode::BadName, e.to_string()),
        };
        match self.dir.store.remove(&safe) {
            Ok(()) | Err(StoreError::NotFound(_)) => {
                if self.manifest.files.remove(&name).is_some() {
                    self.dirty = true;
                }
                Reply::Confirm { transfer, name, size: 0, blake3: None }
            }
            Err(e) => Reply::Failed { transfer, name, why: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &std::path::Path) -> State {
        let dir = BackupDir::open(dir, true).unwrap();
        let disk = BlockWrites::start().unwrap();
        State { manifest: Manifest::default(), dir, dirty: false, saved: Instant::now(), open: HashMap::new(), disk }
    }

    fn digest(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    #[test]
    fn a_transfer_is_written_verified_and_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path());
        assert!(s.apply(Op::Begin { transfer: 1, name: "d/f".into(), size: Some(6) }).is_none());
        assert!(s.apply(Op::Data { transfer: 1, offset: 0, data: Bytes::from_static(b"abc") }).is_none());
        assert!(s.apply(Op::Data { transfer: 1, offset: 3, data: Bytes::from_static(b"def") }).is_none());
        assert!(!tmp.path().join("d/f").exists(), "nothing under the name before the commit");
        let done = Op::Done { transfer: 1, size: 6, blake3: digest(b"abcdef"), etag: "6-1-1".into() };
        let Some(Reply::Confirm { blake3: Some(h), .. }) = s.apply(done) else { panic!("not confirmed") };
        assert_eq!(h, digest(b"abcdef"));
        assert_eq!(std::fs::read(tmp.path().join("d/f")).unwrap(), b"abcdef");
        assert_eq!(s.manifest.files["d/f"].etag.as_deref(), Some("6-1-1"));
        assert!(std::fs::read_dir(s.dir.store.uploads_dir()).unwrap().next().is_none());

        let Some(Reply::Confirm { blake3: None, .. }) = s.apply(Op::Delete { transfer: 2, name: "d/f".into() }) else {
            panic!("delete not confirmed")
        };
        assert!(!tmp.path().join("d/f").exists());
        assert!(s.manifest.files.is_empty());
        assert!(matches!(s.apply(Op::Delete { transfer: 3, name: "d/f".into() }), Some(Reply::Confirm { .. })));
    }

    #[test]
    fn blocks_and_data_make_one_file() {
        use super::super::aligned_block::{BLOCK, BlockPool};
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path());
        let pool = BlockPool::new();
        let data: Vec<u8> = (0..2 * BLOCK + 10).map(|i| (i % 249) as u8).collect();
        let block = |from: usize, to: usize| {
            let mut b = pool.take().unwrap();
            assert_eq!(b.append(&data[from..to]), to - from);
            b
        };
        let size = data.len() as u64;
        assert!(s.apply(Op::Begin { transfer: 1, name: "f".into(), size: Some(size) }).is_none());
        assert!(s.apply(Op::Block { transfer: 1, offset: 0, block: block(0, BLOCK) }).is_none());
        let piece = Bytes::copy_from_slice(&data[BLOCK..BLOCK + 10]);
        assert!(s.apply(Op::Data { transfer: 1, offset: BLOCK as u64, data: piece }).is_none());
        assert!(
            s.apply(Op::Block { transfer: 1, offset: BLOCK as u64 + 10, block: block(BLOCK + 10, data.len()) })
                .is_none()
        );
        let wrong = Op::Block { transfer: 1, offset: 5, block: block(0, 1) };
        assert!(matches!(s.apply(wrong), Some(Reply::Fatal(ErrorCode::BadOffset, _))));
        assert_eq!(pool.out(), 0, "every block went back to the pool");
        let done = Op::Done { transfer: 1, size, blake3: digest(&data), etag: "e".into() };
        assert!(matches!(s.apply(done), Some(Reply::Confirm { blake3: Some(_), .. })));
        assert!(std::fs::read(tmp.path().join("f")).unwrap() == data, "contents differ");
    }

    #[test]
    fn a_wrong_digest_fails_and_keeps_the_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"old").unwrap();
        let mut s = state(tmp.path());
        s.apply(Op::Begin { transfer: 1, name: "f".into(), size: None });
        s.apply(Op::Data { transfer: 1, offset: 0, data: Bytes::from_static(b"new") });
        let done = Op::Done { transfer: 1, size: 3, blake3: digest(b"other"), etag: "3-1-1".into() };
        assert!(matches!(s.apply(done), Some(Reply::Failed { .. })));
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"old");
        s.apply(Op::Begin { transfer: 2, name: "f".into(), size: None });
        let short = Op::Done { transfer: 2, size: 3, blake3: digest(b""), etag: "3-1-1".into() };
        assert!(matches!(s.apply(short), Some(Reply::Failed { .. })));
    }

    #[test]
    fn protocol_violations_are_fatal_and_names_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path());
        for name in ["../escape", "/abs", ".ferry-backup/node-id", "a//b"] {
            let reply = s.apply(Op::Begin { transfer: 9, name: name.into(), size: None });
            assert!(matches!(reply, Some(Reply::Fatal(ErrorCode::BadName, _))), "{name}");
            let reply = s.apply(Op::Delete { transfer: 9, name: name.into() });
            assert!(matches!(reply, Some(Reply::Fatal(ErrorCode::BadName, _))), "{name}");
        }
        let data = |t, o| Op::Data { transfer: t, offset: o, data: Bytes::from_static(b"x") };
        assert!(matches!(s.apply(data(5, 0)), Some(Reply::Fatal(ErrorCode::BadCommand, _))));
        s.apply(Op::Begin { transfer: 5, name: "f".into(), size: Some(1) });
        assert!(matches!(s.apply(data(5, 1)), Some(Reply::Fatal(ErrorCode::BadOffset, _))));
        assert!(s.apply(data(5, 0)).is_none());
        assert!(matches!(s.apply(data(5, 1)), Some(Reply::Fatal(ErrorCode::TooLarge, _))));
        assert!(matches!(s.apply(Op::Begin { transfer: 5, name: "g".into(), size: None }), Some(Reply::Fatal(..))));
        for t in 100..100 + MAX_OPEN_TRANSFERS as u64 - 1 {
            assert!(s.apply(Op::Begin { transfer: t, name: "g".into(), size: None }).is_none());
        }
        assert!(matches!(s.apply(Op::Begin { transfer: 1, name: "g".into(), size: None }), Some(Reply::Fatal(..))));
        s.apply(Op::AbortAll);
        assert!(s.open.is_empty());
        assert!(std::fs::read_dir(s.dir.store.uploads_dir()).unwrap().next().is_none(), "temps removed");
    }
}
