//! Where a GET's bytes go: a partial file (a rewindable consumer: it can
//! truncate and start over) or standard output (non-rewindable: what was
//! written is gone).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// `PATH.part`, where a download accumulates until it is verified.
pub(crate) struct PartFile {
    final_path: PathBuf,
    part_path: PathBuf,
    file: File,
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
        file.seek(SeekFrom::Start(pos))?;
        Ok((PartFile { final_path: final_path.to_path_buf(), part_path, file, pos }, hasher))
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
                p.file.write_all(data)?;
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
                p.file.seek(SeekFrom::Start(0))?;
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
