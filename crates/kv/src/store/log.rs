//! The on-disk log: file layout, record format, checksums and the low-level reader.
//!
//! # Files (all in the store directory)
//!
//! - `kv-<id>.log`: log segments, appended to; `<id>` is 16 lowercase hex digits, ids are never reused.
//! - `kv-<id>.snap`: a compaction snapshot: the live set of every segment with a smaller id, written to
//!   `kv-<id>.snap.tmp`, fdatasync'ed, renamed (the atomic commit point of a compaction), then the directory
//!   is fsync'ed. The snapshot id doubles as the log's *generation*.
//! - `LOCK`: `flock`ed exclusively by the one process allowed to append (see `Store::catch_up`).
//!
//! The log is the highest snapshot `S` (if any) followed by every segment with an id above `S`, in id order.
//! Files with an id below `S`, and `*.tmp` files, are leftovers and are deleted by the next writer to open.
//!
//! # Segment and snapshot format
//!
//! Each file starts with the 8-byte magic `FERRYKV1`, followed by records. All integers are little endian:
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c   CRC-32C (Castagnoli) of bytes [4, record end)
//!      4     4  val_len  length of the value
//!      8     1  op       1 Set, 2 Delete, 3 Touch, 4 FlushAll, 5 CasHighWater
//!      9     1  key_len  0..=250 (1..=250 for Set, Delete, Touch)
//!     10     4  flags    client flags (Set)
//!     14     8  exptime  absolute unix seconds, 0 = never (Set, Touch); the deadline (FlushAll)
//!     22     8  cas      the item's cas (Set, Touch); the store's highest cas so far (other ops)
//!     30     8  time     unix seconds when written (the item's store time, used by delayed flush_all)
//!     38        key, then value
//! ```
//!
//! - `Set` writes the whole item (append/prepend/incr/decr are logged as a `Set` of the result).
//! - `Touch` changes the expiry of the item currently stored under `key`.
//! - `FlushAll` with `exptime <= time` empties the store; with `exptime > time` it schedules a delayed flush:
//!   items stored before `exptime` are invalid once `exptime` has passed.
//! - `CasHighWater` (start of each snapshot) raises the cas counter, so that cas values stay monotonic even
//!   when compaction dropped the records that carried the highest ones.
//!
//! Replay stops at the first record that is short or fails its checksum. In the last segment that is either
//! zeros written ahead of the records (fsync mode preallocates the space its appends will use, so that a
//! commit flushes data only) or a torn tail (a write cut short by a crash or a full disk); a writer keeps the
//! zeros and truncates a torn tail. Anywhere else it is corruption and opening fails with
//! `StoreError::Corrupt`. (A zero header never passes: its op 0 is unknown.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 8] = b"FERRYKV1";
pub(crate) const MAGIC_LEN: u64 = MAGIC.len() as u64;
pub(crate) const HEADER_LEN: usize = 38;
/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Set = 1,
    Delete = 2,
    Touch = 3,
    FlushAll = 4,
    CasHighWater = 5,
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Set,
            2 => Op::Delete,
            3 => Op::Touch,
            4 => Op::FlushAll,
            5 => Op::CasHighWater,
            _ => return None,
        })
    }
}

/// The fields of a record other than key and value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub op: Op,
    pub flags: u32,
    pub exptime: u64,
    pub cas: u64,
    pub time: u64,
}

/// Encodes one record (see the module documentation).
pub(crate) fn encode(meta: Meta, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    encode_into(&mut buf, meta, key, value);
    buf
}

/// Encodes one record into `buf` (cleared first).
pub(crate) fn encode_into(buf: &mut Vec<u8>, meta: Meta, key: &[u8], value: &[u8]) {
    debug_assert!(key.len() <= MAX_KEY_LEN);
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.push(meta.op as u8);
    buf.push(key.len() as u8);
    buf.extend_from_slice(&meta.flags.to_le_bytes());
    buf.extend_from_slice(&meta.exptime.to_le_bytes());
    buf.extend_from_slice(&meta.cas.to_le_bytes());
    buf.extend_from_slice(&meta.time.to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let crc = crc32c(0, &buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Length of an encoded record.
pub(crate) fn record_len(key_len: usize, val_len: usize) -> u64 {
    (HEADER_LEN + key_len + val_len) as u64
}

// CRC-32C, slicing-by-8 with tables built at compile time.
const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][(t[s - 1][i] & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC: [[u32; 256]; 8] = crc_tables();

/// CRC-32C of `data`, continuing from `crc` (0 to start).
pub(crate) fn crc32c(crc: u32, data: &[u8]) -> u32 {
    let t = &CRC;
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// A decoded record.
pub(crate) struct Record {
    pub meta: Meta,
    /// Key followed by value.
    pub data: Vec<u8>,
    pub key_len: usize,
}

impl Record {
    pub fn key(&self) -> &[u8] {
        &self.data[..self.key_len]
    }
}

pub(crate) enum Next {
    Record(Record),
    /// Clean end of file.
    End,
    /// Invalid data at the current offset (why).
    Bad(&'static str),
}

/// Sequential reader over one segment or snapshot, from a given offset up to the length the file had
/// when the reader was created (another process may still be appending).
pub(crate) struct Reader<'a> {
    r: BufReader<&'a File>,
    /// Offset of the next record.
    pub off: u64,
    len: u64,
}

impl<'a> Reader<'a> {
    /// Starts at `off`; at offset 0 the magic is checked first: `Ok(None)` when the file is still shorter
    /// than the magic (being created), `Err(InvalidData)` when the magic is wrong.
    pub fn new(file: &'a File, off: u64) -> io::Result<Option<Reader<'a>>> {
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut off = off;
        if off == 0 {
            if len < MAGIC_LEN {
                return Ok(None);
            }
            let mut m = [0u8; 8];
            r.read_exact(&mut m)?;
            if &m != MAGIC {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not a ferry kv log file (bad magic)"));
            }
            off = MAGIC_LEN;
        } else {
            r.seek(SeekFrom::Start(off))?;
        }
        Ok(Some(Reader { r, off, len }))
    }

    pub fn next(&mut self) -> io::Result<Next> {
        let remaining = self.len.saturating_sub(self.off);
        if remaining == 0 {
            return Ok(Next::End);
        }
        if remaining < HEADER_LEN as u64 {
            return Ok(Next::Bad("short header"));
        }
        let mut h = [0u8; HEADER_LEN];
        if let Err(e) = self.r.read_exact(&mut h) {
            return eof_is_bad(e);
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let stored_crc = u32_at(0);
        let val_len = u32_at(4) as usize;
        let Some(op) = Op::from_u8(h[8]) else { return Ok(Next::Bad("unknown op")) };
        let key_len = h[9] as usize;
        if key_len > MAX_KEY_LEN || (key_len == 0 && matches!(op, Op::Set | Op::Delete | Op::Touch)) {
            return Ok(Next::Bad("bad key length"));
        }
        let len = record_len(key_len, val_len);
        if len > remaining {
            return Ok(Next::Bad("short record"));
        }
        let mut data = vec![0u8; key_len + val_len];
        if let Err(e) = self.r.read_exact(&mut data) {
            return eof_is_bad(e);
        }
        if crc32c(crc32c(0, &h[4..]), &data) != stored_crc {
            return Ok(Next::Bad("bad checksum"));
        }
        let meta = Meta { op, flags: u32_at(10), exptime: u64_at(14), cas: u64_at(22), time: u64_at(30) };
        self.off += len;
        Ok(Next::Record(Record { meta, data, key_len }))
    }
}

fn eof_is_bad(e: io::Error) -> io::Result<Next> {
    if e.kind() == io::ErrorKind::UnexpectedEof { Ok(Next::Bad("file shrank while reading")) } else { Err(e) }
}

pub(crate) fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("kv-{id:016x}.log"))
}

pub(crate) fn snap_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("kv-{id:016x}.snap"))
}

pub(crate) fn snap_tmp_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("kv-{id:016x}.snap.tmp"))
}

/// The files found in a store directory.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub logs: Vec<u64>,
    pub snaps: Vec<u64>,
    pub tmps: Vec<PathBuf>,
    pub max_id: u64,
}

impl Listing {
    pub fn read(dir: &Path) -> io::Result<Listing> {
        let mut l = Listing::default();
        for ent in fs::read_dir(dir)? {
            let ent = ent?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix("kv-") else { continue };
            let Some((hex, ext)) = rest.split_once('.') else { continue };
            let Ok(id) = u64::from_str_radix(hex, 16) else { continue };
            if hex.len() != 16 {
                continue;
            }
            l.max_id = l.max_id.max(id);
            match ext {
                "log" => l.logs.push(id),
                "snap" => l.snaps.push(id),
                "snap.tmp" => l.tmps.push(ent.path()),
                _ => {}
            }
        }
        l.logs.sort_unstable();
        l.snaps.sort_unstable();
        Ok(l)
    }

    /// The current generation: the highest snapshot id, 0 without a snapshot.
    pub fn snap(&self) -> u64 {
        self.snaps.last().copied().unwrap_or(0)
    }

    /// Segments that follow the current snapshot, in replay order.
    pub fn live_logs(&self) -> impl Iterator<Item = u64> + '_ {
        let s = self.snap();
        self.logs.iter().copied().filter(move |&id| id > s)
    }
}

/// Creates a new, empty segment (magic only), durably.
pub(crate) fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let f = OpenOptions::new().read(true).write(true).create_new(true).open(log_path(dir, id))?;
    if let Err(e) = init_segment(&f) {
        drop(f);
        let _ = fs::remove_file(log_path(dir, id));
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(f)
}

/// Whether the bytes `[from, to)` of `f` are all zero (preallocated space, see `persist`). Reads in
/// bounded pieces.
pub(crate) fn all_zero(f: &File, from: u64, to: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut off = from;
    while off < to {
        let want = buf.len().min(usize::try_from(to - off).unwrap_or(usize::MAX));
        let n = f.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(true); // the file shrank: nothing non-zero is left
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// Writes the magic into an empty (or shorter than the magic) segment.
pub(crate) fn init_segment(f: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.set_len(0)?;
    f.write_all_at(MAGIC, 0)?;
    f.sync_data()
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(0, b""), 0);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let whole = crc32c(0, &data);
        for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
            assert_eq!(crc32c(crc32c(0, &data[..split]), &data[split..]), whole);
        }
    }

    #[test]
    fn encode_decode_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let meta = Meta { op: Op::Set, flags: 7, exptime: 99, cas: 5, time: 1234 };
        let mut bytes = MAGIC.to_vec();
        bytes.extend(encode(meta, b"key", b"value"));
        fs::write(&p, &bytes).unwrap();
        let f = File::open(&p).unwrap();
        let mut r = Reader::new(&f, 0).unwrap().unwrap();
        let Next::Record(rec) = r.next().unwrap() else { panic!("no record") };
        assert_eq!((rec.meta.flags, rec.meta.exptime, rec.meta.cas, rec.meta.time), (7, 99, 5, 1234));
        assert_eq!((rec.key(), &rec.data[3..]), (&b"key"[..], &b"value"[..]));
        assert_eq!(r.off, MAGIC_LEN + record_len(3, 5));
        assert!(matches!(r.next().unwrap(), Next::End));
    }
}
