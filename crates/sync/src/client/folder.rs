//! The synced folder on the client's disk: walking it, digesting files, and the changes the client
//! makes to it (received files installed by rename, conflicted copies, deletes). Blocking std code;
//! the client calls it from blocking threads.
//!
//! Only regular files sync. Symlinks are neither followed nor synced (a link could lead the client
//! to read or write outside the folder), and a name arriving from the server is refused (File In
//! Use) when any directory on its way is a symlink or a file. `.ferry-sync/` holds the client's own
//! state; the names rules reserve `.ferry*`, so it is never synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use ferry_files::SafeName;
use md5::{Digest, Md5};

use crate::chunk_digests::ChunkDigests;
use crate::twin_md5::chunk_md5_and_update;
use crate::{LocalFile, Md5Sum};

/// The client's state directory inside the folder.
pub const STATE_DIR: &str = ".ferry-sync";

/// The synced folder.
#[derive(Debug)]
pub(crate) struct Folder {
    root: PathBuf,
    state: PathBuf,
    tmp: PathBuf,
    max_name_len: usize,
    max_files: usize,
}

impl Folder {
    /// Opens (and creates) the folder and its state directory; removes temporary files a previous run
    /// left behind.
    pub fn open(root: &Path, max_name_len: usize, max_files: usize) -> io::Result<Folder> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let state = root.join(STATE_DIR);
        let tmp = state.join("tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Folder { root, state, tmp, max_name_len, max_files })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn path(&self, name: &SafeName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// The sync name of a path under the folder, if it has one (not the state directory, a valid name).
    pub fn name_of(&self, path: &Path) -> Option<SafeName> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(part) => parts.push(part.to_str()?),
                _ => return None,
            }
        }
        SafeName::parse(&parts.join("/"), self.max_name_len).ok()
    }

    /// Whether `path` is the state directory or inside it.
    pub fn is_state(&self, path: &Path) -> bool {
        path.starts_with(&self.state)
    }

    /// The regular file `name` names, if there is one (a symlink or a directory is not one).
    pub fn stat(&self, name: &SafeName) -> io::Result<Option<fs::Metadata>> {
        match fs::symlink_metadata(self.path(name)) {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every regular file under `dir` (a name, or the whole folder), with its metadata. Stops at the
    /// folder's file limit.
    pub fn scan(&self, dir: Option<&Path>) -> io::Result<Vec<(SafeName, fs::Metadata)>> {
        let start = dir.map_or_else(|| self.root.clone(), Path::to_path_buf);
        let mut found = Vec::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if self.is_state(&path) {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(&path) else { continue };
                if meta.is_dir() {
                    pending.push(path);
                } else if meta.is_file()
                    && let Some(name) = self.name_of(&path)
                {
                    if found.len() >= self.max_files {
                        return Err(io::Error::other(format!("more than {} files in the folder", self.max_files)));
                    }
                    found.push((name, meta));
                }
            }
        }
        Ok(found)
    }

    /// Reads and digests `name`. `None` if it is not a regular file (any more). A file that changes
    /// while it is read is read again (a few times), so the size, mtime and md5 describe one version.
    /// In the same pass it digests each `chunk_size` piece of the file, which an upload of this version
    /// then sends without digesting it again ([`crate::chunk_digests`]); those are `None` for a file
    /// with more chunks than are kept.
    pub fn digest_chunks(
        &self,
        name: &SafeName,
        chunk_size: u32,
    ) -> io::Result<Option<(LocalFile, Option<ChunkDigests>)>> {
        for _ in 0..4 {
            let mut file = match File::open(self.path(name)) {
                Ok(file) => file,
                Err(e) if is_missing(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let before = file.metadata()?;
            if !before.is_file() || fs::symlink_metadata(self.path(name)).is_ok_and(|m| m.file_type().is_symlink()) {
                return Ok(None);
            }
            let (md5, chunks) = md5_chunks(&mut file, chunk_size)?;
            let after = file.metadata()?;
            if after.len() == before.len() && mtime_ns(&after) == mtime_ns(&before) {
                return Ok(Some((LocalFile { size: after.len(), mtime_ns: mtime_ns(&after), md5 }, chunks)));
            }
        }
        Err(io::Error::other(format!("{name} keeps changing while it is read")))
    }

    /// A new temporary file for a file being received.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        for _ in 0..8 {
            let path = self.tmp.join(format!("{:016x}.part", rand::random::<u64>()));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free temporary file name"))
    }

    /// Moves a received file (whose digest, checked while receiving, is `md5`) into place as `name`,
    /// creating its directories. Refused if something in the way is a symlink or a file, or `name` is a
    /// directory.
    pub fn install(&self, tmp: &Path, name: &SafeName, md5: Md5Sum) -> io::Result<LocalFile> {
        let dest = self.prepare_parents(name)?;
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Err(io::Error::other(format!("{name} is a directory here")));
        }
        fs::rename(tmp, &dest)?;
        let meta = fs::symlink_metadata(&dest)?;
        Ok(LocalFile { size: meta.len(), mtime_ns: mtime_ns(&meta), md5 })
    }

    /// Renames `from` to `to` in the folder (a conflicted copy: same directory).
    pub fn rename(&self, from: &SafeName, to: &SafeName) -> io::Result<()> {
        let dest = self.prepare_parents(to)?;
        if dest.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{to} exists")));
        }
        fs::rename(self.path(from), dest)
    }

    /// Deletes `name` and the directories that leaves empty. `false` if there was no such file.
    pub fn remove(&self, name: &SafeName) -> io::Result<bool> {
        let path = self.path(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => return Err(io::Error::other(format!("{name} is a directory here"))),
            Ok(_) => {}
            Err(e) if is_missing(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        fs::remove_file(&path)?;
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(true)
    }

    /// Checks (and creates) every directory on the way to `name`; returns its path.
    fn prepare_parents(&self, name: &SafeName) -> io::Result<PathBuf> {
        let mut dir = self.root.clone();
        let components: Vec<&str> = name.components().collect();
        for part in &components[..components.len().saturating_sub(1)] {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(io::Error::other(format!("{} is not a directory here", dir.display()))),
                Err(e) if is_missing(&e) => fs::create_dir(&dir).or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() { Ok(()) } else { Err(e) }
                })?,
                Err(e) => return Err(e),
            }
        }
        Ok(self.path(name))
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// A file's mtime in nanoseconds since the epoch.
pub(crate) fn mtime_ns(meta: &fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

/// The whole file's md5 and, in the same pass, each `chunk_size` piece's (`None` past
/// [`crate::chunk_digests::MAX_CHUNKS`] pieces).
fn md5_chunks(reader: &mut impl Read, chunk_size: u32) -> io::Result<(Md5Sum, Option<ChunkDigests>)> {
    assert!(chunk_size > 0, "a chunk size is at least 1");
    let mut whole = Md5::new();
    let mut chunks = Some(ChunkDigests::new());
    let mut buf = vec![0u8; chunk_size as usize];
    loop {
        let got = read_full(reader, &mut buf)?;
        if got == 0 {
            return Ok((Md5Sum(whole.finalize().into()), chunks));
        }
        let md5 = chunk_md5_and_update(&mut whole, &buf[..got]);
        if let Some(digests) = chunks.as_mut()
            && !digests.push(md5, got as u32)
        {
            chunks = None;
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    #[test]
    fn scan_finds_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::open(dir.path(), 1024, 100).unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/c.txt"), b"c").unwrap();
        fs::write(dir.path().join("top"), b"t").unwrap();
        fs::write(dir.path().join(".ferry-sync/metadata.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let mut names: Vec<String> = f.scan(None).unwrap().into_iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["a/b/c.txt", "top"]);
        assert_eq!(f.stat(&n("link")).unwrap().map(|m| m.len()), None);
        assert!(f.digest_chunks(&n("link"), 4).unwrap().is_none());
        let small = Folder::open(dir.path(), 1024, 1).unwrap();
        assert!(small.scan(None).is_err());
    }

    #[test]
    fn install_rename_remove() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::open(dir.path(), 1024, 100).unwrap();
        let (tmp, _) = f.temp_file().unwrap();
        fs::write(&tmp, b"pushed").unwrap();
        let got = f.install(&tmp, &n("x/y/z.txt"), Md5Sum::of(b"pushed")).unwrap();
        assert_eq!(got.size, 6);
        assert_eq!(fs::read(dir.path().join("x/y/z.txt")).unwrap(), b"pushed");
        assert_eq!(f.digest_chunks(&n("x/y/z.txt"), 4).unwrap().unwrap().0.md5, Md5Sum::of(b"pushed"));
        f.rename(&n("x/y/z.txt"), &n("x/y/z (copy).txt")).unwrap();
        assert!(f.remove(&n("x/y/z (copy).txt")).unwrap());
        assert!(!dir.path().join("x").exists(), "emptied directories go");
        assert!(!f.remove(&n("x/y/z (copy).txt")).unwrap());
    }

    #[test]
    fn nothing_is_written_through_a_symlink_or_over_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let f = Folder::open(dir.path(), 1024, 100).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        for name in ["out/evil", "d", "file/under"] {
            let (tmp, _) = f.temp_file().unwrap();
            assert!(f.install(&tmp, &n(name), Md5Sum::EMPTY).is_err(), "{name}");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn temporary_files_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::open(dir.path(), 1024, 100).unwrap();
        f.temp_file().unwrap();
        Folder::open(dir.path(), 1024, 100).unwrap();
        assert_eq!(fs::read_dir(dir.path().join(".ferry-sync/tmp")).unwrap().count(), 0);
        assert!(f.name_of(&dir.path().canonicalize().unwrap().join(".ferry-sync/x")).is_none());
    }
}
