//! Durable, atomic file replacement.
//!
//! A rename is atomic but not durable: after a crash the directory entry may
//! point at the old file, or at a new inode whose data never reached the
//! disk. These helpers fsync the data, every directory they create, and the
//! directory holding the renamed entry, so a committed file survives power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// fsyncs a directory so entries created, renamed or removed in it persist.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync `tmp`, create parent dirs of `dest` (fsyncing each new dir's
/// parent), rename tmp -> dest, fsync dest's directory.
pub fn commit_file(tmp: &Path, dest: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    let parent = parent_of(dest)?;
    create_dirs_durable(parent)?;
    fs::rename(tmp, dest)?;
    fsync_dir(parent)
}

/// Write bytes to a temp file in dest's directory then [`commit_file`]
/// (used for small metadata files, whose readers must never see a torn write).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = parent_of(dest)?;
    create_dirs_durable(parent)?;
    let file_name = dest.file_name().ok_or_else(|| invalid(dest))?.to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| commit_file(&tmp, dest));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_of(dest: &Path) -> io::Result<&Path> {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        Some(_) => Ok(Path::new(".")),
        None => Err(invalid(dest)),
    }
}

fn invalid(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("not a file path: {}", p.display()))
}

/// Creates `dir` and any missing ancestors, top-down, fsyncing the parent of
/// each one created. Uses `create_dir` (not `create_dir_all`) so an existing
/// non-directory, including a dangling symlink, is an error rather than followed.
fn create_dirs_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir)?;
    create_dirs_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        // Lost a race with a concurrent creator; fine if it made a directory.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_creates_parents_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::write(&tmp, b"new").unwrap();
        let dest = dir.path().join("a/b/c.txt");
        commit_file(&tmp, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert!(!tmp.exists());

        write_atomic(&dest, b"newer").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"newer");
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn refuses_to_create_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"").unwrap();
        assert!(write_atomic(&dir.path().join("f/x"), b"x").is_err());
    }
}
