//! A BLAKE3 hasher whose progress can be saved and restored.
//!
//! An upload may pause at any point and continue in another process, and
//! `blake3::Hasher` cannot be serialized. BLAKE3 is a tree hash, though: the
//! input splits into aligned 1 MiB subtrees (1024 chunks, a power of two, so
//! each is a real subtree of BLAKE3's left-balanced tree) whose chaining
//! values (CVs) are merged pairwise. Only the CV stack needs saving; bytes of
//! the unfinished subtree are re-read from disk on resume.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use blake3::Hasher;
use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

pub const SUBTREE_BYTES: u64 = 1 << 20;
/// Largest checkpoint accepted (4 EiB), far beyond any upload, so restored
/// state can never overflow the length arithmetic.
const MAX_CHECKPOINT_LEN: u64 = 1 << 62;

/// Saved progress: the CV stack covering the first `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashCheckpoint {
    /// A multiple of [`SUBTREE_BYTES`], never exactly one subtree (see
    /// [`ResumableHash::checkpoint`]).
    pub len: u64,
    /// Hex CVs, bottom of the stack first.
    pub stack: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashStateError {
    #[error("hash checkpoint length {0} is not a multiple of {SUBTREE_BYTES}")]
    Unaligned(u64),
    #[error("hash checkpoint length {0} exceeds {MAX_CHECKPOINT_LEN}")]
    TooLong(u64),
    #[error("hash checkpoint cannot cover exactly one subtree")]
    SingleSubtree,
    #[error("hash checkpoint for {len} bytes needs {expected} stack entries, has {found}")]
    StackSize { len: u64, expected: usize, found: usize },
    #[error("hash checkpoint stack entry {0} is not 64 lowercase hex digits")]
    BadHex(usize),
}

/// Incremental BLAKE3 over aligned subtrees with a serializable CV stack.
///
/// The stack is kept like `blake3::Hasher` keeps its own: merged lazily, so
/// after `k` subtrees it holds `popcount(k - 1) + 1` CVs and the newest may
/// still pair with its neighbour. That laziness is what lets [`finalize`]
/// make the very last merge a *root* merge.
///
/// [`finalize`]: ResumableHash::finalize
#[derive(Clone)]
pub struct ResumableHash {
    stack: Vec<ChainingValue>,
    /// Subtrees whose CVs are in `stack`.
    subtrees: u64,
    /// The subtree starting at `subtrees * SUBTREE_BYTES`. When full, it is
    /// finalized only once more input arrives, because if the input ends
    /// there and it is the only subtree, it is the root and needs a root hash.
    current: Hasher,
    current_len: u64,
}

impl Default for ResumableHash {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ResumableHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableHash").field("len", &self.len()).finish_non_exhaustive()
    }
}

impl ResumableHash {
    pub fn new() -> Self {
        ResumableHash { stack: Vec::new(), subtrees: 0, current: Hasher::new(), current_len: 0 }
    }

    pub fn len(&self) -> u64 {
        self.subtrees * SUBTREE_BYTES + self.current_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.current_len == SUBTREE_BYTES {
                // More input follows, so this subtree is not the root.
                let cv = self.current.finalize_non_root();
                push_cv(&mut self.stack, &mut self.subtrees, cv);
                self.current = subtree_hasher(self.subtrees);
                self.current_len = 0;
            }
            let room = usize::try_from(SUBTREE_BYTES - self.current_len).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current.update(now);
            self.current_len += now.len() as u64;
            data = rest;
        }
    }

    /// State covering the largest prefix that is a multiple of
    /// [`SUBTREE_BYTES`] and at most `len()`; the caller re-feeds bytes
    /// `[checkpoint.len, len())` on resume. One exception: a prefix of
    /// exactly one subtree is reported as 0, since a lone non-root CV cannot
    /// yield the hash of a 1 MiB input if nothing more arrives.
    pub fn checkpoint(&self) -> HashCheckpoint {
        let mut stack = self.stack.clone();
        let mut subtrees = self.subtrees;
        if self.current_len == SUBTREE_BYTES && subtrees > 0 {
            // With a subtree before it, the full current one is never the root.
            push_cv(&mut stack, &mut subtrees, self.current.finalize_non_root());
        }
        if subtrees == 1 {
            return HashCheckpoint { len: 0, stack: Vec::new() };
        }
        let stack = stack.iter().map(|cv| blake3::Hash::from_bytes(*cv).to_hex().to_string()).collect();
        HashCheckpoint { len: subtrees * SUBTREE_BYTES, stack }
    }

    /// Restores a checkpoint, checking that it is one `checkpoint` could produce.
    pub fn from_checkpoint(c: &HashCheckpoint) -> Result<Self, HashStateError> {
        if c.len % SUBTREE_BYTES != 0 {
            return Err(HashStateError::Unaligned(c.len));
        }
        if c.len > MAX_CHECKPOINT_LEN {
            return Err(HashStateError::TooLong(c.len));
        }
        let subtrees = c.len / SUBTREE_BYTES;
        if subtrees == 1 {
            return Err(HashStateError::SingleSubtree);
        }
        let expected = if subtrees == 0 { 0 } else { (subtrees - 1).count_ones() as usize + 1 };
        if c.stack.len() != expected {
            return Err(HashStateError::StackSize { len: c.len, expected, found: c.stack.len() });
        }
        let stack = c
            .stack
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let lower = h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                match blake3::Hash::from_hex(h) {
                    Ok(hash) if lower => Ok(*hash.as_bytes()),
                    _ => Err(HashStateError::BadHex(i)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(ResumableHash { stack, subtrees, current: subtree_hasher(subtrees), current_len: 0 })
    }

    pub fn finalize(&self) -> blake3::Hash {
        if self.stack.is_empty() {
            // At most one subtree in total, starting at offset 0: a plain root.
            return self.current.finalize();
        }
        let mut stack = self.stack.clone();
        if self.current_len > 0 {
            let mut subtrees = self.subtrees;
            push_cv(&mut stack, &mut subtrees, self.current.finalize_non_root());
        }
        // The stack is now the lazy form for a whole number of subtrees, and
        // merging right to left builds BLAKE3's tree; only the last merge is the root.
        while stack.len() > 2 {
            merge_top(&mut stack);
        }
        match stack.as_slice() {
            [left, right] => merge_subtrees_root(left, right, Mode::Hash),
            // `from_checkpoint` rejects single-subtree states, and `update`
            // only pushes a CV when the following subtree gets input.
            _ => unreachable!("resumable hash stack holds a lone subtree"),
        }
    }
}

fn subtree_hasher(index: u64) -> Hasher {
    let mut h = Hasher::new();
    h.set_input_offset(index * SUBTREE_BYTES);
    h
}

/// BLAKE3's lazy merge: before pushing subtree number `subtrees`, merge
/// until the stack matches the binary representation of `subtrees`.
fn push_cv(stack: &mut Vec<ChainingValue>, subtrees: &mut u64, cv: ChainingValue) {
    while stack.len() > subtrees.count_ones() as usize {
        merge_top(stack);
    }
    stack.push(cv);
    *subtrees += 1;
}

fn merge_top(stack: &mut Vec<ChainingValue>) {
    if let (Some(right), Some(left)) = (stack.pop(), stack.pop()) {
        stack.push(merge_subtrees_non_root(&left, &right, Mode::Hash));
    }
}

/// Feeds bytes `[into.len(), len)` of `file` into `into` with positional
/// reads, e.g. to catch a restored checkpoint up with the data on disk.
pub fn hash_file_prefix(file: &File, len: u64, into: &mut ResumableHash) -> io::Result<()> {
    if into.len() > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("hash already covers {} bytes, more than the requested {len}", into.len()),
        ));
    }
    let mut buf = vec![0u8; SUBTREE_BYTES as usize];
    while into.len() < len {
        let want = usize::try_from(len - into.len()).unwrap_or(usize::MAX).min(buf.len());
        match file.read_at(&mut buf[..want], into.len()) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ended at {} bytes, expected {len}", into.len()),
                ));
            }
            Ok(n) => into.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: usize = SUBTREE_BYTES as usize;

    fn data(len: usize) -> Vec<u8> {
        // Non-repeating within a chunk, so misplaced chunks change the hash.
        (0..len).map(|i| (i % 251) as u8 ^ (i >> 10) as u8).collect()
    }

    fn hash_in_pieces(input: &[u8], piece: usize) -> ResumableHash {
        let mut h = ResumableHash::new();
        input.chunks(piece.max(1)).for_each(|c| h.update(c));
        h
    }

    #[test]
    fn matches_blake3_at_boundaries() {
        let lens = [0, 1, 1023, 1024, 1025, MIB - 1, MIB, MIB + 1, 2 * MIB, 3 * MIB + 5, 4 * MIB, 5 * MIB];
        for len in lens {
            let input = data(len);
            let expected = blake3::hash(&input);
            assert_eq!(hash_in_pieces(&input, len).finalize(), expected, "len {len} one update");
            assert_eq!(hash_in_pieces(&input, 65_537).finalize(), expected, "len {len} pieces");
        }
    }

    /// Hash `input`, checkpoint after `cut` bytes, restore via JSON, re-feed
    /// from the checkpoint, then finish.
    fn resume_at(input: &[u8], cut: usize, piece: usize) -> blake3::Hash {
        let first = hash_in_pieces(&input[..cut], piece);
        let cp = first.checkpoint();
        assert_eq!(cp.len % SUBTREE_BYTES, 0);
        assert!(cp.len <= cut as u64);
        let json = serde_json::to_string(&cp).unwrap();
        let mut h = ResumableHash::from_checkpoint(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(h.len(), cp.len);
        input[cp.len as usize..].chunks(piece.max(1)).for_each(|c| h.update(c));
        h.finalize()
    }

    #[test]
    fn checkpoint_round_trips_at_boundaries() {
        let input = data(9 * MIB + 77);
        for cut in [0, 5, MIB - 1, MIB, MIB + 1, 2 * MIB, 2 * MIB + 9, 3 * MIB, 4 * MIB, 8 * MIB, 9 * MIB + 77] {
            assert_eq!(resume_at(&input, cut, 300_000), blake3::hash(&input), "cut {cut}");
        }
        // Restoring and finalizing with nothing more to feed.
        for len in [0, 2 * MIB, 3 * MIB, 4 * MIB, 7 * MIB] {
            let input = data(len);
            let cp = hash_in_pieces(&input, MIB).checkpoint();
            assert_eq!(cp.len, len as u64);
            assert_eq!(ResumableHash::from_checkpoint(&cp).unwrap().finalize(), blake3::hash(&input));
        }
        assert_eq!(hash_in_pieces(&data(MIB), MIB).checkpoint().len, 0);
        assert_eq!(hash_in_pieces(&data(MIB + 3), MIB).checkpoint().len, 0);
    }

    #[test]
    fn rejects_inconsistent_checkpoints() {
        let good = hash_in_pieces(&data(3 * MIB), MIB).checkpoint();
        assert_eq!(good.stack.len(), 2);
        let try_cp = |len, stack: Vec<String>| ResumableHash::from_checkpoint(&HashCheckpoint { len, stack });
        assert_eq!(try_cp(5, vec![]).unwrap_err(), HashStateError::Unaligned(5));
        let huge = u64::MAX - (SUBTREE_BYTES - 1);
        assert_eq!(try_cp(huge, vec![]).unwrap_err(), HashStateError::TooLong(huge));
        assert_eq!(try_cp(SUBTREE_BYTES, vec!["00".repeat(32)]).unwrap_err(), HashStateError::SingleSubtree);
        assert!(matches!(try_cp(good.len, vec![good.stack[0].clone()]), Err(HashStateError::StackSize { .. })));
        let mut bad = good.stack.clone();
        bad[1] = bad[1].to_uppercase();
        assert_eq!(try_cp(good.len, bad).unwrap_err(), HashStateError::BadHex(1));
    }

    #[test]
    fn hash_file_prefix_catches_up() {
        let input = data(2 * MIB + 100);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &input).unwrap();
        let mut h = ResumableHash::from_checkpoint(&hash_in_pieces(&input[..2 * MIB], MIB).checkpoint()).unwrap();
        hash_file_prefix(&f, input.len() as u64, &mut h).unwrap();
        assert_eq!(h.finalize(), blake3::hash(&input));
        let err = hash_file_prefix(&f, input.len() as u64 + 1, &mut h).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut h = ResumableHash::new();
        hash_file_prefix(&f, 10, &mut h).unwrap();
        assert_eq!(h.finalize(), blake3::hash(&input[..10]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_lengths_and_splits(len in 0usize..(3 * MIB + 4096), piece in 1usize..400_000, cut_frac in 0.0f64..=1.0) {
            let input = data(len);
            let expected = blake3::hash(&input);
            prop_assert_eq!(hash_in_pieces(&input, piece).finalize(), expected);
            let cut = ((len as f64) * cut_frac) as usize;
            prop_assert_eq!(resume_at(&input, cut.min(len), piece), expected);
        }
    }
}
