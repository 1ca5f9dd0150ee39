//! A chunk's own MD5 and the running MD5 of the whole file it belongs to, in one pass over its bytes.
//!
//! The seed's messages need both of every chunk: its own digest (File Chunk) and the whole file's
//! (Finished), so every sender and every receiver digests each byte twice. MD5 is a chain of dependent
//! 32-bit steps: one digest keeps a core waiting on each step's result, and most of its arithmetic
//! units idle. Two digests of the same 64-byte block, stepped side by side, keep them busy, so both
//! cost little more than one: measured on the benchmark machine, 470 MB/s for the pair against
//! 440 MB/s for md-5 alone (docs/BENCHMARKS.md, Sync). The two chains share the block's words; only
//! their states differ.
//!
//! That needs the whole-file digest to be at a block boundary when the chunk starts (every chunk
//! before it a multiple of 64 bytes long, as ferry's chunk sizes are). Otherwise, and for anything md-5
//! changes in how it exposes its state, it falls back to two plain passes: the result is the same.
//! The whole-file digest stays md-5's own hasher, so its serialized state (which a live upgrade hands
//! over, [`crate::UploadTrackerState`]) is md-5's.

use md5::Md5;
use md5::block_api::compress;
use md5::digest::common::hazmat::{SerializableState, SerializedState};

use crate::Md5Sum;

/// MD5's block size.
const BLOCK: usize = 64;
/// md-5's serialized hasher: state (4 words), blocks done (u64), then its buffer (position byte and
/// 63 bytes).
const STATE_LEN: usize = 16;
const BLOCKS_AT: usize = STATE_LEN;
const POS_AT: usize = BLOCKS_AT + 8;
const SERIALIZED_LEN: usize = POS_AT + 1 + BLOCK - 1;
/// MD5's initial state.
const IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The digest of `chunk` alone; `chunk` is also appended to `file`, the whole file's running digest.
pub fn chunk_md5_and_update(file: &mut Md5, chunk: &[u8]) -> Md5Sum {
    match twin(file, chunk) {
        Some(md5) => md5,
        None => {
            use md5::Digest;
            file.update(chunk);
            Md5Sum::of(chunk)
        }
    }
}

/// The one-pass path; `None` (and `file` untouched) when the file's digest is not at a block boundary.
fn twin(file: &mut Md5, chunk: &[u8]) -> Option<Md5Sum> {
    let mut saved = [0u8; SERIALIZED_LEN];
    let serialized = file.serialize();
    if serialized.len() != SERIALIZED_LEN || serialized[POS_AT] != 0 {
        return None;
    }
    saved.copy_from_slice(&serialized);
    let mut whole = words(&saved[..STATE_LEN]);
    let blocks_done = u64::from_le_bytes(saved[BLOCKS_AT..POS_AT].try_into().ok()?);

    let mut own = IV;
    let full = chunk.len() / BLOCK * BLOCK;
    for block in chunk[..full].chunks_exact(BLOCK) {
        let block: &[u8; BLOCK] = block.try_into().ok()?;
        compress_pair(&mut own, &mut whole, block);
    }
    let tail = &chunk[full..];

    // The whole file: its state after the full blocks, the tail in its buffer.
    let mut next = [0u8; SERIALIZED_LEN];
    for (out, word) in next[..STATE_LEN].chunks_exact_mut(4).zip(whole) {
        out.copy_from_slice(&word.to_le_bytes());
    }
    let blocks = blocks_done.wrapping_add((full / BLOCK) as u64);
    next[BLOCKS_AT..POS_AT].copy_from_slice(&blocks.to_le_bytes());
    next[POS_AT] = tail.len() as u8;
    next[POS_AT + 1..POS_AT + 1 + tail.len()].copy_from_slice(tail);
    let state = SerializedState::<Md5>::try_from(&next[..]).ok()?;
    let rebuilt = <Md5 as SerializableState>::deserialize(&state).ok()?;

    // The chunk alone: MD5's padding (0x80, zeros, the length in bits) after the tail.
    let mut pad = [0u8; 2 * BLOCK];
    pad[..tail.len()].copy_from_slice(tail);
    pad[tail.len()] = 0x80;
    let pad_len = if tail.len() < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
    let bits = (chunk.len() as u64).wrapping_mul(8);
    pad[pad_len - 8..pad_len].copy_from_slice(&bits.to_le_bytes());
    for block in pad[..pad_len].chunks_exact(BLOCK) {
        let block: [u8; BLOCK] = block.try_into().ok()?;
        compress(&mut own, &[block]);
    }
    let mut md5 = [0u8; 16];
    for (out, word) in md5.chunks_exact_mut(4).zip(own) {
        out.copy_from_slice(&word.to_le_bytes());
    }
    *file = rebuilt;
    Some(Md5Sum(md5))
}

fn words(bytes: &[u8]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (word, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    out
}

/// Per step: the additive constant (RFC 1321's T), the rotation, and which word of the block it adds.
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];
const ROTATE: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];

/// Step `i`'s round function (F, G, H, I of RFC 1321).
#[inline(always)]
fn round_fn(i: usize, x: u32, y: u32, z: u32) -> u32 {
    match i / 16 {
        0 => (x & y) | (!x & z),
        1 => (x & z) | (y & !z),
        2 => x ^ y ^ z,
        _ => y ^ (x | !z),
    }
}

/// The block word step `i` adds.
#[inline(always)]
fn word_index(i: usize) -> usize {
    match i / 16 {
        0 => i,
        1 => (5 * i + 1) % 16,
        2 => (3 * i + 5) % 16,
        _ => (7 * i) % 16,
    }
}

/// MD5's compression of one block into two states at once. The steps of the two chains are written
/// one after the other in each step, so the compiler interleaves two independent dependency chains.
#[inline(always)]
fn compress_pair(one: &mut [u32; 4], two: &mut [u32; 4], block: &[u8; BLOCK]) {
    let mut m = [0u32; 16];
    for (word, b) in m.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    let [mut a1, mut b1, mut c1, mut d1] = *one;
    let [mut a2, mut b2, mut c2, mut d2] = *two;
    macro_rules! step {
        ($i:expr) => {{
            let (k, r, w) = (K[$i], ROTATE[$i / 16 * 4 + $i % 4], m[word_index($i)]);
            let t1 = round_fn($i, b1, c1, d1).wrapping_add(a1).wrapping_add(w).wrapping_add(k).rotate_left(r);
            let t2 = round_fn($i, b2, c2, d2).wrapping_add(a2).wrapping_add(w).wrapping_add(k).rotate_left(r);
            (a1, d1, c1, b1) = (d1, c1, b1, t1.wrapping_add(b1));
            (a2, d2, c2, b2) = (d2, c2, b2, t2.wrapping_add(b2));
        }};
    }
    macro_rules! four {
        ($i:expr) => {
            step!($i);
            step!($i + 1);
            step!($i + 2);
            step!($i + 3);
        };
    }
    four!(0);
    four!(4);
    four!(8);
    four!(12);
    four!(16);
    four!(20);
    four!(24);
    four!(28);
    four!(32);
    four!(36);
    four!(40);
    four!(44);
    four!(48);
    four!(52);
    four!(56);
    four!(60);
    for (s, v) in one.iter_mut().zip([a1, b1, c1, d1]) {
        *s = s.wrapping_add(v);
    }
    for (s, v) in two.iter_mut().zip([a2, b2, c2, d2]) {
        *s = s.wrapping_add(v);
    }
}

#[cfg(test)]
mod tests {
    use md5::Digest;

    use super::*;

    fn data(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Feeds `parts` one after the other and checks every chunk digest and the whole file's.
    fn check(parts: &[Vec<u8>]) {
        let mut file = Md5::new();
        let mut all = Vec::new();
        for part in parts {
            assert_eq!(chunk_md5_and_update(&mut file, part), Md5Sum::of(part), "chunk of {}", part.len());
            all.extend_from_slice(part);
            assert_eq!(Md5Sum::of_hasher(&file), Md5Sum::of(&all), "whole file after {} bytes", all.len());
        }
    }

    #[test]
    fn every_tail_length_and_padding_case() {
        for len in 0..=200 {
            check(&[data(128, 1), data(len, len as u32)]);
            check(&[data(len, len as u32 + 7)]);
        }
    }

    #[test]
    fn aligned_chunks_of_a_large_file() {
        check(&[data(1 << 20, 1), data(1 << 20, 2), data(12_345, 3)]);
    }

    #[test]
    fn an_unaligned_file_digest_falls_back_and_agrees() {
        // After 100 bytes the file digest holds a partial block: the two-pass path, then aligned again
        // never (every later chunk starts mid-block), and the results are the same.
        check(&[data(100, 1), data(4096, 2), data(64, 3), data(28, 4), data(4096, 5)]);
    }

    #[test]
    fn the_one_pass_path_is_taken_at_a_block_boundary() {
        let mut file = Md5::new();
        file.update(data(640, 9));
        let before = file.clone();
        assert!(twin(&mut file, &data(1000, 4)).is_some(), "md-5's serialized state is as expected");
        let mut unaligned = before;
        unaligned.update([1u8]);
        assert!(twin(&mut unaligned, &data(1000, 4)).is_none());
    }

    #[test]
    fn the_rebuilt_hasher_serializes_like_md5s_own() {
        let part = data(1000, 5);
        let mut twin_file = Md5::new();
        chunk_md5_and_update(&mut twin_file, &part);
        let mut plain = Md5::new();
        plain.update(&part);
        assert_eq!(twin_file.serialize()[..], plain.serialize()[..]);
    }
}
