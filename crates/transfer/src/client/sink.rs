//! Where a GET's bytes go: a partial file (a rewindable consumer: it can
//! truncate and start over) or standard output (non-rewindable: what was
//! written is gone).
//!
//! The partial file is written with `O_DIRECT` where it can be
//! ([`DirectChunks`], as the server writes a PUT): a buffered write copies
//! every byte into the page cache first, and that copy, with the page
//! allocation behind it, was most of the client's CPU in a large GET and
//! swung with the state of the machine's memory (0.9 to 3.0 CPU-s per
//! GiB). Each write has finished when [`Sink::write`] returns, so the
//! position a resumed GET asks for is always on the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ferry_files::DirectChunks;

/// `PATH.part`, where a download accumulates until it is verified.
pub(crate) struct PartFile {
    final_path: PathBuf,
    part_path: PathBuf,
    file: File,
    /// Direct or buffered writes, chosen at the first large aligned write.
    direct: DirectChunks,
    pos: u64,
}

pub(crate) enum Sink {
    Part(PartFile),
    Stdout { pos: u64 },
}

pub(crate) fn part_path(final_path: &Path) -> PathBuf {
    let mut name = final_path.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

impl PartFile {
    /// Opens `PATH.part`. With `keep`, existing bytes are kept (a resume)
    /// and hashed; otherwise the file starts empty.
    pub(crate) fn open(final_path: &Path, keep: bool) -> io::Result<(PartFile, blake3::Hasher)> {
        let part_path = part_path(final_path);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(!keep).open(&part_path)?;
        // Writes are positional (at `pos`); the cursor is only used to hash a kept prefix.
        let mut hasher = blake3::Hasher::new();
        let mut pos = 0u64;
        if keep {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
        }
        let direct = DirectChunks::default();
        Ok((PartFile { final_path: final_path.to_path_buf(), part_path, file, direct, pos }, hasher))
    }
}

impl Sink {
    pub(crate) fn pos(&self) -> u64 {
        match self {
            Sink::Part(p) => p.pos,
            Sink::Stdout { pos } => *pos,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Sink::Part(_) => "the partial file",
            Sink::Stdout { .. } => "standard output",
        }
    }

    /// Whether the sink can go back to offset 0.
    pub(crate) fn can_restart(&self) -> bool {
        match self {
            Sink::Part(_) => true,
            Sink::Stdout { pos } => *pos == 0,
        }
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Part(p) => {
                p.direct.write_span(&p.file, &p.part_path, &[data], p.pos)?;
                p.pos += data.len() as u64;
            }
            Sink::Stdout { pos } => {
                let mut out = io::stdout();
                out.write_all(data)?;
                *pos += data.len() as u64;
            }
        }
        Ok(())
    }

    /// Back to offset 0 (only when [`Sink::can_restart`]).
    pub(crate) fn restart(&mut self) -> io::Result<()> {
        match self {
            Sink::Part(p) => {
                p.file.set_len(0)?;
                p.pos = 0;
                Ok(())
            }
            Sink::Stdout { pos } if *pos == 0 => Ok(()),
            Sink::Stdout { .. } => Err(io::Error::other("standard output cannot be rewound")),
        }
    }

    /// Makes the download final: fsync and rename `PATH.part` to `PATH`.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        match self {
            Sink::Part(p) => {
                p.file.sync_all()?;
                std::fs::rename(&p.part_path, &p.final_path)?;
                if let Some(dir) = p.final_path.parent() {
                    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            }
            Sink::Stdout { .. } => io::stdout().flush(),
        }
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
    }

    /// Frames of a large download land whole whether they go direct (aligned) or buffered (a resumed prefix
    /// of odd length, the tail), and a restart starts the file over.
    #[test]
    fn a_part_file_comes_back_whole_across_direct_and_buffered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let data = pattern(3 * (1 << 20) + 777);
        let (first, _) = PartFile::open(&out, false).unwrap();
        let mut sink = Sink::Part(first);
        sink.write(&data[..1000]).unwrap();
        sink.write(&data[1000..5000]).unwrap();
        assert!(sink.can_restart());
        sink.restart().unwrap();
        assert_eq!(sink.pos(), 0);
        for chunk in data[..1 << 20].chunks(256 << 10) {
            sink.write(chunk).unwrap();
        }
        drop(sink);
        // A resume keeps (and hashes) the prefix, then goes on from an offset that is not aligned.
        let (kept, hasher) = PartFile::open(&out, true).unwrap();
        assert_eq!(kept.pos, 1 << 20);
        assert_eq!(hasher.finalize(), blake3::hash(&data[..1 << 20]));
        let mut sink = Sink::Part(kept);
        sink.write(&data[1 << 20..(1 << 20) + 12_345]).unwrap();
        for chunk in data[(1 << 20) + 12_345..].chunks(256 << 10) {
            sink.write(chunk).unwrap();
        }
        assert_eq!(sink.pos(), data.len() as u64);
        sink.finish().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(!part_path(&out).exists());
    }
}
