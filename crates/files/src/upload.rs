//! Resumable partial uploads, staged in the uploads dir.
//!
//! Each upload is a data file `<id>` plus a sidecar `<id>.json` recording the
//! target name and declared size, so a reconnecting client can resume only
//! the upload it started, and a stale one can be recognised and expired.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::atomic::{fsync_dir, write_atomic};
use crate::name::SafeName;
use crate::store::{FileMeta, FileStore, StoreError, io_err};

/// Sidecars are a few hundred bytes; anything bigger is corrupt, not read.
const MAX_SIDECAR_BYTES: u64 = 16 * 1024;

/// 32 lowercase hex chars (128 random bits chosen by the client), which also
/// makes it safe to use directly as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct UploadId(String);

impl UploadId {
    pub fn parse(s: &str) -> Option<UploadId> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| UploadId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_bytes(b: [u8; 16]) -> UploadId {
        UploadId(b.iter().map(|x| format!("{x:02x}")).collect())
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sidecar: what an upload is for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UploadMeta {
    pub name: String,
    pub size: Option<u64>,
    pub created_unix_ms: u64,
}

/// An open staged upload; write at `durable_len` onwards.
#[derive(Debug)]
pub struct PartialUpload {
    pub id: UploadId,
    pub path: PathBuf,
    /// Opened read+write, so the writer can also re-hash what is already there.
    pub file: File,
    pub durable_len: u64,
    pub resumed: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn read_sidecar(path: &Path) -> Option<UploadMeta> {
    let mut buf = Vec::new();
    File::open(path).ok()?.take(MAX_SIDECAR_BYTES).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

impl FileStore {
    fn upload_paths(&self, id: &UploadId) -> (PathBuf, PathBuf) {
        let dir = self.uploads_dir();
        (dir.join(id.as_str()), dir.join(format!("{id}.json")))
    }

    /// Resumes `uploads/<id>` if its sidecar names the same target and size
    /// (durable_len = data length, cut back to `size` if longer); otherwise
    /// starts it afresh: data truncated to 0, new sidecar.
    pub fn open_upload(&self, id: &UploadId, name: &SafeName, size: Option<u64>) -> Result<PartialUpload, StoreError> {
        let (data, sidecar) = self.upload_paths(id);
        let ctx = |what: &str| io_err(format!("{what} upload {id}"));
        let matches = read_sidecar(&sidecar).is_some_and(|m| m.name == name.as_str() && m.size == size);
        if matches {
            match OpenOptions::new().read(true).write(true).open(&data) {
                Ok(file) => {
                    let mut len = file.metadata().map_err(ctx("stat"))?.len();
                    if let Some(limit) = size.filter(|&s| len > s) {
                        file.set_len(limit).map_err(ctx("truncate"))?;
                        len = limit;
                    }
                    // A previous writer may have died before its fsync; make
                    // the length we report as durable actually so.
                    file.sync_all().map_err(ctx("sync"))?;
                    return Ok(PartialUpload { id: id.clone(), path: data, file, durable_len: len, resumed: true });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx("open")(e)),
            }
        }
        // Truncate before writing the new sidecar: a crash in between leaves
        // an old sidecar that no longer matches, so the next open starts over.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(ctx("create"))?;
        let meta = UploadMeta { name: name.as_str().to_owned(), size, created_unix_ms: now_ms() };
        let json = serde_json::to_vec(&meta).map_err(|e| ctx("encode sidecar of")(e.into()))?;
        write_atomic(&sidecar, &json).map_err(ctx("write sidecar of"))?;
        Ok(PartialUpload { id: id.clone(), path: data, file, durable_len: 0, resumed: false })
    }

    /// Removes data and sidecar; an already-gone upload is not an error.
    pub fn discard_upload(&self, id: &UploadId) -> Result<(), StoreError> {
        let (data, sidecar) = self.upload_paths(id);
        ignore_missing(fs::remove_file(&sidecar))
            .and_then(|()| ignore_missing(fs::remove_file(&data)))
            .and_then(|()| fsync_dir(self.uploads_dir()))
            .map_err(io_err(format!("discard upload {id}")))
    }

    /// Moves the upload's data into place as `name` and drops its sidecar.
    pub fn finish_upload(&self, id: &UploadId, name: &SafeName) -> Result<FileMeta, StoreError> {
        let (data, sidecar) = self.upload_paths(id);
        match fs::symlink_metadata(&data) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("upload {id}")));
            }
            r => r.map_err(io_err(format!("stat upload {id}")))?,
        };
        let meta = self.commit(&data, name)?;
        ignore_missing(fs::remove_file(&sidecar))
            .and_then(|()| fsync_dir(self.uploads_dir()))
            .map_err(io_err(format!("remove sidecar of upload {id}")))?;
        Ok(meta)
    }

    /// Deletes uploads with no activity (latest mtime of data and sidecar)
    /// for longer than `max_age`, including orphaned data or sidecars and
    /// leftover sidecar temp files. Returns how many uploads were removed.
    ///
    /// Last activity rather than creation time, so a slow upload that keeps
    /// making progress is never expired under its writer.
    pub fn expire_uploads(&self, max_age: Duration) -> Result<usize, StoreError> {
        let dir = self.uploads_dir();
        let ctx = || io_err(format!("expire uploads in {}", dir.display()));
        let now = SystemTime::now();
        let is_old = |p: &Path| match fs::symlink_metadata(p).and_then(|m| m.modified()) {
            Ok(t) => now.duration_since(t).is_ok_and(|age| age > max_age),
            Err(_) => true, // gone, or no mtime: nothing worth keeping
        };
        let mut ids = std::collections::HashSet::new();
        for entry in fs::read_dir(dir).map_err(ctx())? {
            let entry = entry.map_err(ctx())?;
            let Some(fname) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(id) = UploadId::parse(fname.strip_suffix(".json").unwrap_or(&fname)) {
                ids.insert(id);
            } else if fname.starts_with('.') && fname.contains(".json.tmp-") && is_old(&entry.path()) {
                ignore_missing(fs::remove_file(entry.path())).map_err(ctx())?;
            }
        }
        let mut removed = 0;
        for id in ids {
            let (data, sidecar) = self.upload_paths(&id);
            if is_old(&data) && is_old(&sidecar) {
                self.discard_upload(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::DEFAULT_MAX_NAME_BYTES;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    fn setup() -> (tempfile::TempDir, FileStore, UploadId) {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(&dir.path().join("root"), &dir.path().join("up")).unwrap();
        (dir, s, UploadId::from_bytes([0xab; 16]))
    }

    #[test]
    fn upload_id_shape() {
        let id = UploadId::from_bytes([0x0f; 16]);
        assert_eq!(id.as_str(), "0f".repeat(16));
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        for bad in ["", "0f", &"0F".repeat(16), &"0g".repeat(16), &"0".repeat(33), "../../../../etc/passwd0000000000"] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn resume_matches_name_and_size() {
        let (_d, s, id) = setup();
        let mut u = s.open_upload(&id, &n("f"), Some(10)).unwrap();
        assert!(!u.resumed);
        assert_eq!(u.durable_len, 0);
        u.file.write_all(b"12345").unwrap();

        let u = s.open_upload(&id, &n("f"), Some(10)).unwrap();
        assert!(u.resumed);
        assert_eq!(u.durable_len, 5);
        let mut buf = [0; 5];
        u.file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"12345");

        // Longer than declared: cut back to the declared size.
        u.file.write_all_at(b"67890abc", 5).unwrap();
        let u = s.open_upload(&id, &n("f"), Some(10)).unwrap();
        assert_eq!((u.resumed, u.durable_len), (true, 10));
        assert_eq!(fs::metadata(&u.path).unwrap().len(), 10);

        // Different size or name: start over.
        let u = s.open_upload(&id, &n("f"), None).unwrap();
        assert_eq!((u.resumed, u.durable_len), (false, 0));
        assert_eq!(fs::metadata(&u.path).unwrap().len(), 0);
        let u = s.open_upload(&id, &n("g"), None).unwrap();
        assert!(!u.resumed);

        // Missing data with a matching sidecar, or a corrupt sidecar: fresh too.
        fs::remove_file(&u.path).unwrap();
        assert!(!s.open_upload(&id, &n("g"), None).unwrap().resumed);
        fs::write(s.uploads_dir().join(format!("{id}.json")), b"{not json").unwrap();
        assert!(!s.open_upload(&id, &n("g"), None).unwrap().resumed);
    }

    #[test]
    fn finish_and_discard() {
        let (_d, s, id) = setup();
        let mut u = s.open_upload(&id, &n("dir/out.bin"), Some(3)).unwrap();
        u.file.write_all(b"abc").unwrap();
        let meta = s.finish_upload(&id, &n("dir/out.bin")).unwrap();
        assert_eq!(meta.size, 3);
        assert_eq!(fs::read(s.root().join("dir/out.bin")).unwrap(), b"abc");
        assert_eq!(fs::read_dir(s.uploads_dir()).unwrap().count(), 0);
        assert!(matches!(s.finish_upload(&id, &n("x")), Err(StoreError::NotFound(_))));

        s.open_upload(&id, &n("x"), None).unwrap();
        s.discard_upload(&id).unwrap();
        s.discard_upload(&id).unwrap();
        assert_eq!(fs::read_dir(s.uploads_dir()).unwrap().count(), 0);
    }

    #[test]
    fn expire_removes_only_stale() {
        let (_d, s, id) = setup();
        let fresh = UploadId::from_bytes([1; 16]);
        s.open_upload(&id, &n("a"), None).unwrap();
        s.open_upload(&fresh, &n("b"), None).unwrap();
        let orphan = UploadId::from_bytes([2; 16]);
        fs::write(s.uploads_dir().join(orphan.as_str()), b"x").unwrap();
        fs::write(s.uploads_dir().join("unrelated"), b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for p in [id.to_string(), format!("{id}.json"), orphan.to_string()] {
            File::options().write(true).open(s.uploads_dir().join(p)).unwrap().set_modified(old).unwrap();
        }
        assert_eq!(s.expire_uploads(Duration::from_secs(60)).unwrap(), 2);
        let mut left: Vec<_> =
            fs::read_dir(s.uploads_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [fresh.to_string(), format!("{fresh}.json"), "unrelated".to_owned()]);
        assert_eq!(s.expire_uploads(Duration::from_secs(60)).unwrap(), 0);
    }
}
