//! The roster on disk: `<data>/sync/META-DATA`, in the wire's META-DATA encoding (docs/sync-protocol.md
//! §4.2), replaced atomically (temp file, fsync, rename, directory fsync).
//!
//! Every commit persists the roster before the client is told Status OK. Concurrent commits share one
//! write: a writer that finds the file already holds its version returns at once, so under load one
//! write covers every commit made while the previous write ran (a group commit, with no timer). The
//! files themselves are committed before the roster; a crash between the two leaves a file newer than
//! the roster says, which the rescan at start ([`super::rescan`]) finds by size and mtime.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::BytesMut;

use crate::{Limits, Message, Metadata, Roster};

/// Bytes of the META-DATA header (type field included) that precede its body.
const HEADER_LEN: u64 = 20;

/// Why the saved roster cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RosterFileError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid META-DATA file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The roster's file, and the version it holds.
#[derive(Debug)]
pub(crate) struct RosterFile {
    path: PathBuf,
    limits: Limits,
    /// The last version written; held while writing, so writers queue behind one another.
    written: Mutex<u64>,
}

impl RosterFile {
    pub fn new(path: PathBuf, limits: Limits) -> RosterFile {
        RosterFile { path, limits, written: Mutex::new(0) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved roster; `None` if there is none yet.
    pub fn load(&self) -> Result<Option<Metadata>, RosterFileError> {
        let io_err = |source| RosterFileError::Io { path: self.path.clone(), source };
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        let max = HEADER_LEN + u64::from(self.limits.max_metadata_bytes) + 1;
        file.take(max).read_to_end(&mut bytes).map_err(io_err)?;
        let corrupt = |reason: String| RosterFileError::Corrupt { path: self.path.clone(), reason };
        let mut cursor = io::Cursor::new(&bytes[..]);
        match Message::parse(&mut cursor, &self.limits) {
            Ok(Message::MetaData(metadata)) if cursor.position() == bytes.len() as u64 => {
                *self.lock() = metadata.last_version;
                Ok(Some(metadata))
            }
            Ok(Message::MetaData(_)) => Err(corrupt("trailing bytes after the META-DATA".into())),
            Ok(other) => Err(corrupt(format!("holds a {} message", other.message_type().name()))),
            Err(e) => Err(corrupt(e.to_string())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the roster if the file does not hold its current version yet (blocking: call it from a
    /// blocking thread). Returns once a version at least as new as the roster's when called is on disk.
    pub fn persist(&self, roster: &Mutex<Roster>) -> io::Result<()> {
        let mut written = self.lock();
        let snapshot = roster.lock().unwrap_or_else(|p| p.into_inner()).snapshot();
        if snapshot.last_version <= *written {
            return Ok(());
        }
        self.write(&snapshot)?;
        *written = snapshot.last_version;
        Ok(())
    }

    /// Writes the roster whatever version the file holds (after a rescan, or before a handover).
    pub fn force(&self, roster: &Mutex<Roster>) -> io::Result<()> {
        let mut written = self.lock();
        let snapshot = roster.lock().unwrap_or_else(|p| p.into_inner()).snapshot();
        self.write(&snapshot)?;
        *written = snapshot.last_version;
        Ok(())
    }

    fn write(&self, snapshot: &Metadata) -> io::Result<()> {
        let message = Message::MetaData(snapshot.clone());
        let mut buf = BytesMut::with_capacity(message.encoded_len());
        message.encode(&mut buf);
        ferry_files::write_atomic(&self.path, &buf)
    }

    /// Moves an unreadable file aside (kept for inspection) so the server can start from a rescan.
    pub fn set_aside(&self) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let aside = self.path.with_extension(format!("corrupt-{stamp}"));
        std::fs::rename(&self.path, &aside)?;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientId, LeaseKind, Md5Sum};
    use ferry_files::SafeName;

    fn roster_with(names: &[&str]) -> Mutex<Roster> {
        let mut r = Roster::new(&Limits::default());
        let client = ClientId::parse("a").unwrap();
        for name in names {
            let name = SafeName::parse(name, 1024).unwrap();
            r.acquire(&name, &client, LeaseKind::Update).unwrap();
            r.commit_update(&name, &client, 1, Md5Sum::of(b"x"), 7).unwrap();
        }
        Mutex::new(r)
    }

    #[test]
    fn round_trips_and_skips_writes_that_are_not_needed() {
        let dir = tempfile::tempdir().unwrap();
        let file = RosterFile::new(dir.path().join("META-DATA"), Limits::default());
        assert!(file.load().unwrap().is_none());
        let roster = roster_with(&["a", "b/c"]);
        file.persist(&roster).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(loaded, roster.lock().unwrap().snapshot());
        // Nothing new: no write (the file's mtime does not move).
        let before = std::fs::metadata(file.path()).unwrap().modified().unwrap();
        file.persist(&roster).unwrap();
        assert_eq!(std::fs::metadata(file.path()).unwrap().modified().unwrap(), before);
    }

    #[test]
    fn a_damaged_file_is_refused_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = RosterFile::new(dir.path().join("META-DATA"), Limits::default());
        file.persist(&roster_with(&["a"])).unwrap();
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(file.path(), &bytes).unwrap();
        assert!(matches!(file.load(), Err(RosterFileError::Corrupt { .. })));
        let aside = file.set_aside().unwrap();
        assert!(aside.exists());
        assert!(file.load().unwrap().is_none());
    }
}
