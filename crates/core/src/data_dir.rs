//! The data directory's layout and the files the server publishes in it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Longest path a Unix socket address can hold (sun_path, minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `<data>/`: files, uploads, admin socket, pid file, listen.json.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> DataDir {
        DataDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uploads(&self) -> PathBuf {
        self.path.join("uploads")
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("ferry.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.path.join("ferry.pid")
    }

    pub fn listen_file(&self) -> PathBuf {
        self.path.join("listen.json")
    }

    /// Creates the directory and checks that the admin socket path fits.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.path)?;
        let socket = self.socket();
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "data directory path too long for the admin socket ({} bytes, limit {MAX_SOCKET_PATH}): {}",
                    socket.as_os_str().len(),
                    socket.display()
                ),
            ));
        }
        Ok(())
    }

    /// Writes `listen.json`: service name → bound address.
    pub fn write_listen(&self, listeners: &BTreeMap<String, String>) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(listeners).map_err(io::Error::other)?;
        write_replace(&self.listen_file(), &json)
    }

    pub fn write_pid(&self, pid: u32) -> io::Result<()> {
        write_replace(&self.pid_file(), format!("{pid}\n").as_bytes())
    }

    /// Reads `listen.json`, as clients and tests do.
    pub fn read_listen(&self) -> io::Result<BTreeMap<String, String>> {
        let bytes = std::fs::read(self.listen_file())?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Removes what a stopped server leaves behind, if it is still ours.
    pub fn remove_published(&self, pid: u32) {
        if std::fs::read_to_string(self.pid_file()).is_ok_and(|s| s.trim() == pid.to_string()) {
            let _ = std::fs::remove_file(self.pid_file());
            let _ = std::fs::remove_file(self.listen_file());
            let _ = std::fs::remove_file(self.socket());
        }
    }
}

/// Replaces a small file atomically (temp file, rename), so a reader never
/// sees it half-written. No fsync: these files describe a running process,
/// which a machine crash ends anyway, and an fsync here would sit inside a
/// live upgrade's pause.
fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.create().unwrap();
        let mut map = BTreeMap::new();
        map.insert("transfer".to_string(), "127.0.0.1:4000".to_string());
        data.write_listen(&map).unwrap();
        assert_eq!(data.read_listen().unwrap(), map);
    }

    #[test]
    fn too_long_socket_path_is_refused() {
        let long = PathBuf::from("/tmp").join("x".repeat(120));
        assert!(DataDir::new(long).create().is_err());
    }
}
