//! The served directory tree.
//!
//! Names are validated by [`SafeName`], but the tree may contain symlinks put
//! there by the operator; [`FileStore::resolve`] is what stops a symlink from
//! leading a client outside the root. Symlinks are trusted to be operator-made,
//! so the check-then-open window is acceptable: clients cannot create them.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::atomic::{commit_file, fsync_dir};
use crate::etag::Etag;
use crate::name::{DEFAULT_MAX_NAME_BYTES, RESERVED_PREFIX, SafeName};

/// Bound on directories one listing walks, so a tree of empty directories
/// (or many aliasing symlinks) cannot make a listing unbounded work.
const MAX_LIST_DIRS: usize = 100_000;

/// What a client learns about a stored file.
#[derive(Clone, Debug)]
pub struct FileMeta {
    pub size: u64,
    pub etag: Etag,
    pub modified_unix_ms: u64,
}

impl FileMeta {
    fn from_metadata(m: &Metadata) -> FileMeta {
        let modified_unix_ms = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        FileMeta { size: m.len(), etag: Etag::from_metadata(m), modified_unix_ms }
    }
}

/// One line of a directory listing.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub etag: Etag,
    pub modified_unix_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("not a regular file: {0}")]
    NotAFile(String),
    #[error("name escapes the root: {0}")]
    Escapes(String),
    #[error("too many files to list (limit {0})")]
    TooMany(usize),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// Attaches a human context ("open /srv/x") to an io::Error.
pub(crate) fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { context: context.to_string(), source }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// A root directory of served files plus a staging directory for uploads.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    uploads: PathBuf,
}

impl FileStore {
    /// Creates root and uploads dirs if missing; canonicalizes both.
    ///
    /// Uploads are committed by rename, so both must be on one filesystem; if
    /// the uploads dir is inside the root it must be a reserved `.ferry*` entry
    /// so partial uploads are never listed or served.
    pub fn open(root: &Path, uploads: &Path) -> Result<FileStore, StoreError> {
        let canon = |p: &Path| {
            fs::create_dir_all(p)
                .and_then(|()| fs::canonicalize(p))
                .map_err(io_err(format!("create directory {}", p.display())))
        };
        let (root, uploads) = (canon(root)?, canon(uploads)?);
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).map_err(io_err(format!("stat {}", p.display())));
        if dev(&root)? != dev(&uploads)? {
            let msg = "must be on the same filesystem so uploads can be renamed into place";
            let ctx = format!("uploads dir {} and root {}", uploads.display(), root.display());
            return Err(io_err(ctx)(io::Error::other(msg)));
        }
        if let Ok(rel) = uploads.strip_prefix(&root) {
            let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
            if !first.is_some_and(|f| f.starts_with(RESERVED_PREFIX)) {
                let msg = format!("inside the root it must be a top-level {RESERVED_PREFIX}* directory");
                return Err(io_err(format!("uploads dir {}", uploads.display()))(io::Error::other(msg)));
            }
        }
        Ok(FileStore { root, uploads })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn uploads_dir(&self) -> &Path {
        &self.uploads
    }

    /// `root.join(name)` after checking that the deepest *existing* ancestor
    /// (or the file itself), canonicalized, is inside the root: a symlink
    /// pointing outside (or into a reserved `.ferry*` directory) gives
    /// `Escapes`; symlinks staying inside are allowed.
    pub fn resolve(&self, name: &SafeName) -> Result<PathBuf, StoreError> {
        let path = self.root.join(name.as_str());
        let mut probe = path.as_path();
        loop {
            match fs::canonicalize(probe) {
                Ok(real) if self.contains(&real) => return Ok(path),
                Ok(_) => return Err(StoreError::Escapes(name.to_string())),
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(io_err(format!("resolve {name}"))(e)),
            }
            match probe.parent() {
                // The root itself always canonicalizes inside the root.
                Some(p) if p.starts_with(&self.root) => probe = p,
                _ => return Err(StoreError::Escapes(name.to_string())),
            }
        }
    }

    /// Whether a canonical path is servable: under the root and not inside a
    /// reserved `.ferry*` directory (which a symlink could otherwise expose).
    fn contains(&self, real: &Path) -> bool {
        match real.strip_prefix(&self.root) {
            Ok(rel) => {
                !rel.components().next().is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(RESERVED_PREFIX))
            }
            Err(_) => false,
        }
    }

    /// Opens for reading; metadata comes from the *opened fd*, so the etag
    /// describes exactly the bytes this fd reads even if the name is replaced.
    pub fn open_file(&self, name: &SafeName) -> Result<(File, FileMeta), StoreError> {
        let path = self.resolve(name)?;
        // O_NONBLOCK: opening a FIFO must not hang the server before we can
        // see it is not a regular file. It has no effect on regular files.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| self.classify(name, e))?;
        let m = file.metadata().map_err(io_err(format!("stat {name}")))?;
        if !m.is_file() {
            return Err(StoreError::NotAFile(name.to_string()));
        }
        Ok((file, FileMeta::from_metadata(&m)))
    }

    /// Metadata by name (stat, following symlinks), same checks as `open_file`.
    pub fn stat(&self, name: &SafeName) -> Result<FileMeta, StoreError> {
        let path = self.resolve(name)?;
        let m = fs::metadata(&path).map_err(|e| self.classify(name, e))?;
        if !m.is_file() {
            return Err(StoreError::NotAFile(name.to_string()));
        }
        Ok(FileMeta::from_metadata(&m))
    }

    /// Metadata by name if the file is still the version `known`, an etag
    /// that [`FileStore::stat`] or [`FileStore::open_file`] returned for this
    /// name: one `stat` and no [`FileStore::resolve`], for a file served
    /// again and again. `None` when it is another version, gone, or not
    /// readable; the caller then takes the checked path.
    ///
    /// Skipping the symlink check is safe because an etag names one file
    /// (inode, size, mtime): whatever path now leads to that very file, it is
    /// the file that passed the check. What this cannot notice is a symlink
    /// changed to lead to that same file from outside the root (the file
    /// moved out and linked back in), so callers bound how long they trust a
    /// check (the HTTP gateway: one second).
    pub fn stat_known(&self, name: &SafeName, known: &Etag) -> Option<FileMeta> {
        // One allocation for the path, not a copy of the root then a growth.
        let mut path = PathBuf::with_capacity(self.root.as_os_str().len() + 1 + name.as_str().len());
        path.push(&self.root);
        path.push(name.as_str());
        let m = fs::metadata(&path).ok()?;
        let meta = FileMeta::from_metadata(&m);
        (m.is_file() && meta.etag == *known).then_some(meta)
    }

    fn classify(&self, name: &SafeName, e: io::Error) -> StoreError {
        if is_missing(&e) { StoreError::NotFound(name.to_string()) } else { io_err(format!("open {name}"))(e) }
    }

    /// Recursive listing of regular files, sorted by name. Symlinks are
    /// followed only if they resolve inside the root (a linked directory is
    /// listed under its link name too); a directory that is its own ancestor
    /// is not re-entered, so symlink loops terminate. Names that are not valid
    /// `SafeName`s and top-level `.ferry*` entries are skipped.
    pub fn list(&self, limit: usize) -> Result<Vec<FileEntry>, StoreError> {
        let mut out = Vec::new();
        let mut dirs_visited = 0usize;
        let root_m = fs::metadata(&self.root).map_err(io_err(format!("stat {}", self.root.display())))?;
        // Each pending directory carries the (dev, inode) chain from the root.
        let mut pending = vec![(self.root.clone(), String::new(), vec![(root_m.dev(), root_m.ino())])];
        while let Some((dir, prefix, ancestors)) = pending.pop() {
            dirs_visited += 1;
            if dirs_visited > MAX_LIST_DIRS {
                let msg = format!("more than {MAX_LIST_DIRS} directories");
                return Err(io_err(format!("list {}", self.root.display()))(io::Error::other(msg)));
            }
            let entries = match fs::read_dir(&dir) {
                Err(e) if is_missing(&e) && !prefix.is_empty() => continue, // removed meanwhile
                r => r.map_err(io_err(format!("list {}", dir.display())))?,
            };
            for entry in entries {
                let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
                let Some(base) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let rel = if prefix.is_empty() { base } else { format!("{prefix}/{base}") };
                let Ok(name) = SafeName::parse(&rel, DEFAULT_MAX_NAME_BYTES) else {
                    continue;
                };
                let path = entry.path();
                let m = match self.inside_metadata(&path) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
                };
                if m.is_dir() {
                    let id = (m.dev(), m.ino());
                    if !ancestors.contains(&id) {
                        let mut chain = ancestors.clone();
                        chain.push(id);
                        pending.push((path, rel, chain));
                    }
                } else if m.is_file() {
                    if out.len() >= limit {
                        return Err(StoreError::TooMany(limit));
                    }
                    let meta = FileMeta::from_metadata(&m);
                    out.push(FileEntry {
                        name: name.as_str().to_owned(),
                        size: meta.size,
                        etag: meta.etag,
                        modified_unix_ms: meta.modified_unix_ms,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Metadata of a listed entry, following a symlink only if its target is
    /// inside the root. `None` for vanished entries and outside/dangling links.
    fn inside_metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        let lm = match fs::symlink_metadata(path) {
            Err(e) if is_missing(&e) => return Ok(None),
            r => r?,
        };
        if !lm.file_type().is_symlink() {
            return Ok(Some(lm));
        }
        match fs::canonicalize(path) {
            Ok(real) if self.contains(&real) => match fs::metadata(&real) {
                Err(e) if is_missing(&e) => Ok(None),
                r => r.map(Some),
            },
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// fsyncs `tmp` (any file on the same filesystem, e.g. an upload) and
    /// renames it over `name`; readers see the old or the new file, never a mix.
    pub fn commit(&self, tmp: &Path, name: &SafeName) -> Result<FileMeta, StoreError> {
        let dest = self.resolve(name)?;
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Err(StoreError::NotAFile(name.to_string()));
        }
        // Keep an fd so the returned metadata is that of the inode we renamed,
        // even if a concurrent commit replaces `name` right after.
        let file = File::open(tmp).map_err(io_err(format!("open {}", tmp.display())))?;
        let m = file.metadata().map_err(io_err(format!("stat {}", tmp.display())))?;
        if !m.is_file() {
            return Err(StoreError::NotAFile(tmp.display().to_string()));
        }
        commit_file(tmp, &dest).map_err(io_err(format!("commit {name}")))?;
        let m = file.metadata().map_err(io_err(format!("stat {name}")))?;
        Ok(FileMeta::from_metadata(&m))
    }

    /// Deletes a stored file (or a symlink itself, never its target).
    pub fn remove(&self, name: &SafeName) -> Result<(), StoreError> {
        let path = self.resolve(name)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => return Err(StoreError::NotAFile(name.to_string())),
            Ok(_) => {}
            Err(e) => return Err(self.classify(name, e)),
        }
        fs::remove_file(&path).map_err(|e| self.classify(name, e))?;
        let parent = path.parent().unwrap_or(&self.root);
        fsync_dir(parent).map_err(io_err(format!("sync directory of {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(&dir.path().join("root"), &dir.path().join("root/.ferry-uploads")).unwrap();
        (dir, s)
    }

    #[test]
    fn open_checks_uploads_placement() {
        let dir = tempfile::tempdir().unwrap();
        let r = FileStore::open(&dir.path().join("root"), &dir.path().join("root/uploads"));
        assert!(r.unwrap_err().to_string().contains("must be a top-level"));
        let s = FileStore::open(&dir.path().join("root"), &dir.path().join("up")).unwrap();
        assert!(s.uploads_dir().ends_with("up"));
    }

    #[test]
    fn open_file_and_stat() {
        let (_d, s) = store();
        fs::create_dir_all(s.root().join("dir")).unwrap();
        fs::write(s.root().join("dir/a.txt"), b"hello").unwrap();
        let (mut f, meta) = s.open_file(&n("dir/a.txt")).unwrap();
        let mut buf = String::new();
        f.read_to_string(&mut buf).unwrap();
        assert_eq!((buf.as_str(), meta.size), ("hello", 5));
        assert_eq!(s.stat(&n("dir/a.txt")).unwrap().etag, meta.etag);
        assert!(matches!(s.open_file(&n("dir")), Err(StoreError::NotAFile(_))));
        assert!(matches!(s.stat(&n("dir")), Err(StoreError::NotAFile(_))));
        assert!(matches!(s.open_file(&n("missing")), Err(StoreError::NotFound(_))));
        assert!(matches!(s.open_file(&n("dir/a.txt/x")), Err(StoreError::NotFound(_))));
        assert!(matches!(s.stat(&n("no/such")), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn stat_known_only_for_the_same_version() {
        let (_d, s) = store();
        fs::write(s.root().join("a"), b"one").unwrap();
        let seen = s.stat(&n("a")).unwrap();
        let again = s.stat_known(&n("a"), &seen.etag).unwrap();
        assert_eq!((again.size, &again.etag), (3, &seen.etag));
        // Replaced (new inode): another version, so no answer.
        fs::write(s.root().join("b"), b"two").unwrap();
        fs::rename(s.root().join("b"), s.root().join("a")).unwrap();
        assert!(s.stat_known(&n("a"), &seen.etag).is_none());
        let now = s.stat(&n("a")).unwrap();
        assert!(s.stat_known(&n("a"), &now.etag).is_some());
        fs::remove_file(s.root().join("a")).unwrap();
        assert!(s.stat_known(&n("a"), &now.etag).is_none());
        // A directory never matches a file's etag.
        fs::create_dir(s.root().join("d")).unwrap();
        assert!(s.stat_known(&n("d"), &now.etag).is_none());
    }

    #[test]
    fn symlinks_inside_allowed_outside_refused() {
        let (_d, s) = store();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("passwd"), b"secret").unwrap();
        fs::write(s.root().join("real"), b"ok").unwrap();
        fs::create_dir(s.root().join("sub")).unwrap();
        symlink(s.root().join("real"), s.root().join("link")).unwrap();
        symlink("../real", s.root().join("sub/rel")).unwrap();
        symlink(outside.path(), s.root().join("out")).unwrap();
        symlink(outside.path().join("passwd"), s.root().join("pw")).unwrap();

        assert_eq!(s.open_file(&n("link")).unwrap().1.size, 2);
        assert_eq!(s.open_file(&n("sub/rel")).unwrap().1.size, 2);
        for name in ["out/passwd", "out", "pw", "out/new/file"] {
            assert!(matches!(s.resolve(&n(name)), Err(StoreError::Escapes(_))), "{name}");
        }
        assert!(matches!(s.open_file(&n("out/passwd")), Err(StoreError::Escapes(_))));
        symlink(s.uploads_dir(), s.root().join("staged")).unwrap();
        fs::write(s.uploads_dir().join("part"), b"partial").unwrap();
        assert!(matches!(s.open_file(&n("staged/part")), Err(StoreError::Escapes(_))));
        let tmp = s.uploads_dir().join("t");
        fs::write(&tmp, b"x").unwrap();
        assert!(matches!(s.commit(&tmp, &n("out/evil")), Err(StoreError::Escapes(_))));
        assert!(!outside.path().join("evil").exists());
    }

    #[test]
    fn commit_replaces_atomically() {
        let (_d, s) = store();
        let tmp = s.uploads_dir().join("t");
        fs::write(&tmp, b"old").unwrap();
        let first = s.commit(&tmp, &n("a/b.txt")).unwrap();
        let (mut old_fd, old_meta) = s.open_file(&n("a/b.txt")).unwrap();
        assert_eq!(old_meta.etag, first.etag);

        fs::write(&tmp, b"new!").unwrap();
        let second = s.commit(&tmp, &n("a/b.txt")).unwrap();
        assert_ne!(first.etag, second.etag);
        assert_eq!(second.size, 4);
        assert_eq!(fs::read(s.root().join("a/b.txt")).unwrap(), b"new!");
        let mut buf = Vec::new();
        old_fd.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"old", "an open reader keeps the version it opened");
        assert!(!tmp.exists());

        fs::create_dir(s.root().join("d")).unwrap();
        fs::write(&tmp, b"x").unwrap();
        assert!(matches!(s.commit(&tmp, &n("d")), Err(StoreError::NotAFile(_))));
    }

    #[test]
    fn remove_files_only() {
        let (_d, s) = store();
        fs::create_dir(s.root().join("d")).unwrap();
        fs::write(s.root().join("d/f"), b"x").unwrap();
        s.remove(&n("d/f")).unwrap();
        assert!(!s.root().join("d/f").exists());
        assert!(matches!(s.remove(&n("d/f")), Err(StoreError::NotFound(_))));
        assert!(matches!(s.remove(&n("d")), Err(StoreError::NotAFile(_))));
    }

    #[test]
    fn list_sorts_recurses_and_skips() {
        let (_d, s) = store();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"x").unwrap();
        fs::create_dir_all(s.root().join("b/c")).unwrap();
        fs::create_dir_all(s.root().join(".ferry-state")).unwrap();
        for f in ["z", "a", "b/c/d", "b/x", ".ferry-state/hidden", ".ferry-uploads/part"] {
            fs::write(s.root().join(f), f).unwrap();
        }
        symlink(s.root().join("b"), s.root().join("b/c/loop")).unwrap();
        symlink(s.root().join("a"), s.root().join("alias")).unwrap();
        symlink(outside.path(), s.root().join("out")).unwrap();
        symlink("/nonexistent", s.root().join("dangling")).unwrap();
        symlink(s.uploads_dir(), s.root().join("staged")).unwrap();

        let names: Vec<_> = s.list(100).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["a", "alias", "b/c/d", "b/x", "z"]);
        let e = &s.list(100).unwrap()[0];
        assert_eq!((e.size, &e.etag), (1, &s.stat(&n("a")).unwrap().etag));
        assert!(matches!(s.list(4), Err(StoreError::TooMany(4))));
    }
}
