//! Whole-file reads: the one place the gateway reads a file into memory.
//!
//! Files up to [`crate::HttpLimits::whole_file_max_bytes`] are served from
//! one `Bytes` (ranges are `Bytes::slice`, no copy). Every such read goes
//! through [`load_whole`], so putting the shared byte-bounded cache in front
//! of this single function puts it in front of every small-file response.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;
use ferry_files::{Etag, FileMeta, FileStore, SafeName, StoreError};
use memmap2::MmapMut;

/// Hard bound on one whole-file read, whatever the configuration says: it
/// is a single allocation.
pub const MAX_WHOLE_FILE_BYTES: u64 = 1 << 30;

/// The file on disk is not (or no longer) the version the caller expected;
/// the caller should look again rather than send a mix of two versions.
#[derive(Debug, thiserror::Error)]
#[error("file changed while being read")]
pub struct FileChanged;

/// Whether `e` is a [`FileChanged`].
pub fn is_file_changed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<FileChanged>())
}

/// Reads the whole of `name`, which the caller has seen as `meta`. Fails
/// with [`FileChanged`] if the file is another version (etag) than `meta`
/// when opened, or becomes one while being read, so the bytes returned are
/// exactly the version `meta.etag` names: safe to cache under that etag.
///
/// Blocking; call it from a blocking thread.
pub fn load_whole(store: &FileStore, name: &SafeName, meta: &FileMeta) -> io::Result<Bytes> {
    load_whole_into(store, name, meta, WholeBuffer::Heap(Vec::new()))
}

/// [`load_whole`] into `buf`, which the caller made with [`whole_buffer`].
pub fn load_whole_into(store: &FileStore, name: &SafeName, meta: &FileMeta, buf: WholeBuffer) -> io::Result<Bytes> {
    load_whole_keeping(store, name, meta, buf).map(|(bytes, _file)| bytes)
}

/// [`load_whole_into`], handing back the file the bytes were read from too,
/// still open: it is that version's inode, checked unchanged after the read.
pub fn load_whole_keeping(
    store: &FileStore,
    name: &SafeName,
    meta: &FileMeta,
    buf: WholeBuffer,
) -> io::Result<(Bytes, File)> {
    if meta.size > MAX_WHOLE_FILE_BYTES {
        let msg = format!("{name} is {} bytes, over the whole-read bound of {MAX_WHOLE_FILE_BYTES}", meta.size);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let (file, opened) = store.open_file(name).map_err(store_to_io)?;
    if opened.etag != meta.etag {
        return Err(io::Error::other(FileChanged));
    }
    let len = usize::try_from(meta.size).map_err(io::Error::other)?;
    let bytes = match buf {
        WholeBuffer::Mapped(mut map) if map.len() == len => {
            let mut reader = &file;
            reader.seek(SeekFrom::Start(0))?;
            reader.read_exact(&mut map).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::other(FileChanged),
                _ => e,
            })?;
            Bytes::from_owner(map)
        }
        WholeBuffer::Mapped(_) => Bytes::from(read_piece_into(&file, 0, len, Vec::new())?),
        WholeBuffer::Heap(vec) => Bytes::from(read_piece_into(&file, 0, len, vec)?),
    };
    ensure_unchanged(&file, &meta.etag)?;
    Ok((bytes, file))
}

/// What a whole file is read into: made by [`whole_buffer`] on the thread
/// that will free the bytes, filled on the blocking pool.
#[derive(Debug)]
pub enum WholeBuffer {
    /// Below [`MAPPED_FROM_BYTES`]: the heap.
    Heap(Vec<u8>),
    /// From [`MAPPED_FROM_BYTES`] up: pages of its own, exactly the file's
    /// length.
    Mapped(MmapMut),
}

/// Whole files from this size up are read into pages of their own (an
/// anonymous mapping) rather than the heap: glibc's default threshold for
/// the same choice, which glibc itself raises to the largest block freed.
pub const MAPPED_FROM_BYTES: u64 = 128 << 10;

/// An empty buffer for the whole of a file of `size` bytes (none over
/// [`MAX_WHOLE_FILE_BYTES`]), to be filled on the blocking pool.
///
/// Made on the calling thread (an HTTP worker) rather than on the blocking
/// thread that reads: the bytes are freed on a worker (once sent, or
/// evicted from the cache), and glibc's malloc keeps an arena per thread,
/// so buffers allocated across hundreds of blocking threads left freed
/// memory spread over many arenas, unused by the next allocation.
///
/// Large files get a mapping of their own. Cache entries are freed in
/// eviction order, not allocation order, and glibc, once a block of a few
/// MiB is freed, serves later ones from its heaps: entries of 1 KiB to
/// 4 MiB evicted at random left holes there that kept about 20 MiB more
/// resident (docs/BENCHMARKS.md). A mapping goes back to the kernel whole
/// when its entry is dropped; it costs a page fault per 4 KiB on the load,
/// which reads the file anyway. If the mapping fails, the heap.
pub fn whole_buffer(size: u64) -> WholeBuffer {
    let Ok(len) = usize::try_from(size) else { return WholeBuffer::Heap(Vec::new()) };
    if size > MAX_WHOLE_FILE_BYTES {
        return WholeBuffer::Heap(Vec::new());
    }
    if size >= MAPPED_FROM_BYTES
        && let Ok(map) = MmapMut::map_anon(len)
    {
        return WholeBuffer::Mapped(map);
    }
    WholeBuffer::Heap(Vec::with_capacity(len))
}

/// Exactly `len` bytes of `file` from `offset`, in a buffer that is not
/// zeroed first: filling a large piece with zeros only to overwrite it cost
/// about a twentieth of a large download's CPU time. Moves the file's
/// position, so one file must not be read by two of these at once. A file
/// that ends early was truncated under us: [`FileChanged`].
pub fn read_piece(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    read_piece_into(file, offset, len, Vec::new())
}

/// [`read_piece`] into `buf` (emptied first; best allocated with room for
/// `len` by the thread that frees it: [`whole_buffer`]).
pub fn read_piece_into(file: &File, offset: u64, len: usize, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    buf.clear();
    buf.reserve_exact(len);
    reader.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() < len {
        return Err(io::Error::other(FileChanged));
    }
    debug_assert_eq!(buf.len(), len);
    Ok(buf)
}

/// Fails with [`FileChanged`] if the open file is no longer the version
/// `etag` names: an in-place write changes its mtime (and maybe size). A
/// replace-by-rename does not affect an open descriptor at all.
pub fn ensure_unchanged(file: &File, etag: &Etag) -> io::Result<()> {
    if Etag::from_metadata(&file.metadata()?) == *etag { Ok(()) } else { Err(io::Error::other(FileChanged)) }
}

/// Keeps "not found" recognisable; everything else is an I/O failure.
fn store_to_io(e: StoreError) -> io::Error {
    match e {
        StoreError::NotFound(_) | StoreError::NotAFile(_) | StoreError::Escapes(_) => {
            io::Error::new(io::ErrorKind::NotFound, e.to_string())
        }
        StoreError::Io { source, context } => io::Error::new(source.kind(), format!("{context}: {source}")),
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_files::DEFAULT_MAX_NAME_BYTES;
    use std::fs;
    use std::io::Write;

    fn setup() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("root"), &dir.path().join("up")).unwrap();
        (dir, store)
    }

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    #[test]
    fn loads_the_version_seen() {
        let (_d, store) = setup();
        fs::write(store.root().join("a"), b"hello world").unwrap();
        let meta = store.stat(&n("a")).unwrap();
        assert_eq!(load_whole(&store, &n("a"), &meta).unwrap(), Bytes::from_static(b"hello world"));

        // Replaced after the stat: refused rather than served under the old etag.
        fs::write(store.root().join("b.tmp"), b"HELLO").unwrap();
        fs::rename(store.root().join("b.tmp"), store.root().join("a")).unwrap();
        let e = load_whole(&store, &n("a"), &meta).unwrap_err();
        assert!(is_file_changed(&e), "{e}");

        let e = load_whole(&store, &n("missing"), &meta).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!is_file_changed(&e));
    }

    #[test]
    fn in_place_change_is_detected() {
        let (_d, store) = setup();
        let path = store.root().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let (file, meta) = store.open_file(&n("f")).unwrap();
        ensure_unchanged(&file, &meta.etag).unwrap();
        let mut w = fs::OpenOptions::new().append(true).open(&path).unwrap();
        w.write_all(b"more").unwrap();
        assert!(is_file_changed(&ensure_unchanged(&file, &meta.etag).unwrap_err()));
    }

    #[test]
    fn pieces_are_exact_and_a_short_file_is_a_change() {
        let (_d, store) = setup();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(store.root().join("p"), &data).unwrap();
        let (file, _) = store.open_file(&n("p")).unwrap();
        assert_eq!(read_piece(&file, 0, 10).unwrap(), &data[..10]);
        assert_eq!(read_piece(&file, 9_000, 1_000).unwrap(), &data[9_000..]);
        // Out of order, as a reader after a range would: the position is set each time.
        assert_eq!(read_piece(&file, 100, 5_000).unwrap(), &data[100..5_100]);
        assert!(read_piece(&file, 10_000, 0).unwrap().is_empty());
        assert!(is_file_changed(&read_piece(&file, 9_000, 1_001).unwrap_err()));
        assert!(is_file_changed(&read_piece(&file, 20_000, 1).unwrap_err()));
    }

    #[test]
    fn a_buffer_given_is_filled_in_place() {
        let (_d, store) = setup();
        fs::write(store.root().join("w"), b"whole file").unwrap();
        let meta = store.stat(&n("w")).unwrap();
        let buf = whole_buffer(meta.size);
        let WholeBuffer::Heap(vec) = &buf else { panic!("a small file goes on the heap: {buf:?}") };
        assert!(vec.capacity() >= 10 && vec.is_empty());
        let at = vec.as_ptr();
        let bytes = load_whole_into(&store, &n("w"), &meta, buf).unwrap();
        assert_eq!(&bytes[..], b"whole file");
        assert_eq!(bytes.as_ptr(), at, "no second allocation");
        let (file, _) = store.open_file(&n("w")).unwrap();
        let piece = read_piece_into(&file, 6, 4, b"old bytes".to_vec()).unwrap();
        assert_eq!(piece, b"file", "emptied first");
        assert!(matches!(whole_buffer(MAX_WHOLE_FILE_BYTES + 1), WholeBuffer::Heap(v) if v.capacity() == 0));
    }

    #[test]
    fn a_large_file_is_read_into_a_mapping_of_its_own() {
        let (_d, store) = setup();
        let data: Vec<u8> = (0..MAPPED_FROM_BYTES as u32 + 5).map(|i| (i % 253) as u8).collect();
        let path = store.root().join("m");
        fs::write(&path, &data).unwrap();
        let meta = store.stat(&n("m")).unwrap();
        let buf = whole_buffer(meta.size);
        let WholeBuffer::Mapped(map) = &buf else { panic!("{buf:?}") };
        assert_eq!(map.len(), data.len());
        let at = map.as_ptr();
        let bytes = load_whole_into(&store, &n("m"), &meta, buf).unwrap();
        assert_eq!(bytes, data);
        assert_eq!(bytes.as_ptr(), at, "the mapping is the body");
        // Truncated after the stat: a change, not short bytes.
        let buf = whole_buffer(meta.size);
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(10).unwrap();
        assert!(is_file_changed(&load_whole_into(&store, &n("m"), &meta, buf).unwrap_err()));
    }

    #[test]
    fn bounded() {
        let (_d, store) = setup();
        fs::write(store.root().join("a"), b"x").unwrap();
        let mut meta = store.stat(&n("a")).unwrap();
        meta.size = MAX_WHOLE_FILE_BYTES + 1;
        assert_eq!(load_whole(&store, &n("a"), &meta).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
