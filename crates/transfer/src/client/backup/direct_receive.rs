//! [`DirectReceive`]: one transfer's BACKUPDATA payloads received straight
//! into aligned blocks, past the connection's read buffer.
//!
//! Without this the node copies every byte twice in user space: out of the
//! kernel into the read buffer, then into the writer's aligned `O_DIRECT`
//! block (13 % of the node's CPU). Here the connection reads a BACKUPDATA
//! header into the read buffer, reads only the header (never ahead into
//! the payload), and then reads the payload with [`ferry_core::Conn::pump_into`]
//! into the free room of a [`PooledBlock`]. A full block goes to the writer
//! thread as [`Op::Block`] and is hashed and written from where it lies.
//!
//! Only one transfer at a time is received this way (the one whose
//! BACKUPINFO came while none was): its blocks start at file offset 0 and
//! hold [`BLOCK`] bytes each, so every block is at an aligned file offset.
//! Anything unusual (a payload at an offset other than expected, one past
//! the declared size, a header of another kind) leaves the direct path:
//! the bytes gathered so far go to the writer and the frame takes the
//! ordinary path, where the writer checks it and answers any violation.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::aligned_block::{BLOCK, BlockPool, PooledBlock};
use super::writer::Op;
use crate::frame::{FrameType, HEADER_LEN};

/// A BACKUPDATA header and its transfer and offset fields.
pub(super) const DATA_HEADER_LEN: usize = HEADER_LEN + 16;

/// The transfer received directly.
struct Stream {
    transfer: u64,
    size: Option<u64>,
    /// File offset of the next byte to arrive.
    next: u64,
    /// The block being filled: the file bytes just before `next`.
    block: Option<PooledBlock>,
    /// Bytes of the current BACKUPDATA payload not received yet.
    left: usize,
}

pub(super) struct DirectReceive {
    pool: Arc<BlockPool>,
    stream: Option<Stream>,
}

impl DirectReceive {
    pub fn new(pool: Arc<BlockPool>) -> DirectReceive {
        DirectReceive { pool, stream: None }
    }

    pub fn pool(&self) -> &Arc<BlockPool> {
        &self.pool
    }

    /// A transfer begins (its BACKUPINFO was forwarded): received directly
    /// if no other one is.
    pub fn begin(&mut self, transfer: u64, size: Option<u64>) {
        if self.stream.is_none() {
            self.stream = Some(Stream { transfer, size, next: 0, block: None, left: 0 });
        }
    }

    /// Whether `transfer` is the one received directly.
    pub fn holds(&self, transfer: u64) -> bool {
        self.stream.as_ref().is_some_and(|s| s.transfer == transfer)
    }

    /// Whether a transfer is received directly (reads then stop at frame
    /// ends, see [`DirectReceive::read_limit`]).
    pub fn active(&self) -> bool {
        self.stream.is_some()
    }

    /// Ends the direct path of its transfer; the bytes gathered go to the
    /// writer (pushed on `out`) ahead of whatever the caller queues next.
    /// For a frame of this transfer that takes the ordinary path, and for
    /// its BACKUPDONE.
    pub fn finish(&mut self, out: &mut VecDeque<Op>) {
        if let Some(mut s) = self.stream.take() {
            assert!(s.left == 0, "a direct transfer ended in the middle of a payload");
            push_block(&mut s, out);
        }
    }

    /// Drops the direct path and its bytes (the transfer was aborted).
    pub fn discard(&mut self) {
        self.stream = None;
    }

    /// If the read buffer starts with a BACKUPDATA header this transfer
    /// can take directly, consumes the header and returns true: the
    /// payload follows through [`DirectReceive::fill`] and
    /// [`DirectReceive::room`].
    pub fn start_frame(&mut self, buf: &mut BytesMut, max_frame: u32) -> bool {
        let Some(s) = self.stream.as_mut() else { return false };
        if s.left > 0 || buf.len() < DATA_HEADER_LEN || buf[0] != FrameType::BackupData as u8 {
            return false;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let transfer = u64::from_be_bytes(field(&buf[HEADER_LEN..]));
        let offset = u64::from_be_bytes(field(&buf[HEADER_LEN + 8..]));
        if len > max_frame || (len as usize) <= DATA_HEADER_LEN - HEADER_LEN {
            return false;
        }
        let payload = len as usize - (DATA_HEADER_LEN - HEADER_LEN);
        let end = offset.saturating_add(payload as u64);
        if transfer != s.transfer || offset != s.next || s.size.is_some_and(|size| end > size) {
            return false;
        }
        buf.advance(DATA_HEADER_LEN);
        s.left = payload;
        true
    }

    /// Whether a payload is being received.
    pub fn receiving(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.left > 0)
    }

    /// Whether a payload is being received and no block is there to take
    /// it (all [`super::aligned_block::MAX_BLOCKS`] are with the writer):
    /// wait for [`BlockPool::returned`].
    pub fn starved(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.left > 0 && s.block.is_none())
    }

    /// Hands a full block to the writer (on `out`), and moves what the
    /// read buffer holds of the current payload into the block.
    pub fn fill(&mut self, buf: &mut BytesMut, out: &mut VecDeque<Op>) {
        let Some(s) = self.stream.as_mut() else { return };
        if s.block.as_ref().is_some_and(|b| b.is_full()) {
            push_block(s, out);
        }
        if s.left == 0 {
            return;
        }
        if s.block.is_none() {
            s.block = self.pool.take();
        }
        let Some(block) = s.block.as_mut() else { return };
        let n = block.append(&buf[..buf.len().min(s.left)]);
        buf.advance(n);
        s.left -= n;
        s.next += n as u64;
    }

    /// Where the socket's next bytes of the payload go: `None` if no
    /// payload is being received or the block is full or missing.
    pub fn room(&mut self) -> Option<&mut [u8]> {
        let s = self.stream.as_mut()?;
        let left = s.left;
        let block = s.block.as_mut()?;
        if left == 0 || block.is_full() {
            return None;
        }
        let room = block.room();
        let n = room.len().min(left);
        Some(&mut room[..n])
    }

    /// Counts `n` bytes read into [`DirectReceive::room`].
    pub fn received(&mut self, n: usize) {
        let Some(s) = self.stream.as_mut() else { return };
        assert!(n <= s.left, "received {n} bytes of a payload with {} left", s.left);
        if let Some(block) = s.block.as_mut() {
            block.advance(n);
            s.left -= n;
            s.next += n as u64;
        }
    }

    /// Most bytes to read into the buffer while a transfer is received
    /// directly: up to the end of the next BACKUPDATA header, or of the
    /// frame in front; `None` if a whole frame is buffered already.
    pub fn read_limit(buf: &[u8]) -> Option<usize> {
        if buf.len() < DATA_HEADER_LEN {
            return Some(DATA_HEADER_LEN - buf.len());
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let total = HEADER_LEN + len;
        (total > buf.len()).then(|| total - buf.len())
    }
}

/// Queues the stream's block, if it holds bytes, for the writer.
fn push_block(s: &mut Stream, out: &mut VecDeque<Op>) {
    if let Some(block) = s.block.take_if(|b| b.len() > 0) {
        let offset = s.next - block.len() as u64;
        debug_assert!(offset % BLOCK as u64 == 0, "a direct block at offset {offset}");
        out.push_back(Op::Block { transfer: s.transfer, offset, block });
    }
}

fn field(b: &[u8]) -> [u8; 8] {
    let mut f = [0u8; 8];
    f.copy_from_slice(&b[..8]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::backup::aligned_block::MAX_BLOCKS;
    use crate::frame::Frame;
    use bytes::Bytes;

    fn data_frame(transfer: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        Frame::BackupData { transfer, offset, data: Bytes::copy_from_slice(data) }.encode().to_vec()
    }

    /// Feeds `frames` through the direct path, `piece` bytes at a time
    /// through the read buffer or straight into the room, and returns the
    /// ops it made and the bytes it did not take.
    fn run(d: &mut DirectReceive, wire: &[u8], piece: usize, straight: bool) -> (Vec<Op>, BytesMut) {
        let mut buf = BytesMut::new();
        let mut out = VecDeque::new();
        let mut ops = Vec::new();
        let mut at = 0;
        let mut stuck = 0;
        loop {
            d.fill(&mut buf, &mut out);
            ops.extend(out.drain(..));
            if !d.receiving() && d.start_frame(&mut buf, 1 << 22) {
                continue;
            }
            if straight && d.receiving() && buf.is_empty() && at < wire.len() {
                // A full block is handed on by the next `fill`.
                if let Some(room) = d.room() {
                    let n = room.len().min(piece).min(wire.len() - at);
                    room[..n].copy_from_slice(&wire[at..at + n]);
                    d.received(n);
                    at += n;
                }
                continue;
            }
            if at == wire.len() {
                // What is buffered still moves on (a block at a time).
                stuck += 1;
                if buf.is_empty() || stuck > 100 {
                    break;
                }
                continue;
            }
            let n = piece.min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
        }
        (ops, buf)
    }

    fn joined(ops: &[Op]) -> Vec<u8> {
        let mut all = Vec::new();
        for op in ops {
            let Op::Block { offset, block, .. } = op else { panic!("not a block") };
            assert_eq!(*offset as usize, all.len(), "blocks out of order");
            assert_eq!(*offset as usize % BLOCK, 0, "a block at an unaligned offset");
            all.extend_from_slice(block.filled());
        }
        all
    }

    #[test]
    fn payloads_land_in_whole_blocks_in_order() {
        // The ops keep their blocks, so the pool's blocks bound the size.
        let data: Vec<u8> = (0..(MAX_BLOCKS - 1) * BLOCK + 12345).map(|i| (i % 253) as u8).collect();
        let mut wire = Vec::new();
        for (i, chunk) in data.chunks(262_144 + 7).enumerate() {
            wire.extend(data_frame(4, (i * (262_144 + 7)) as u64, chunk));
        }
        for (piece, straight) in [(1000, false), (65_536, true), (5, true), (1 << 22, false)] {
            let mut d = DirectReceive::new(BlockPool::new());
            d.begin(4, Some(data.len() as u64));
            let (mut ops, rest) = run(&mut d, &wire, piece, straight);
            assert!(rest.is_empty(), "bytes left in the buffer");
            let mut out = VecDeque::new();
            d.finish(&mut out);
            ops.extend(out);
            assert!(ops.iter().rev().skip(1).all(|op| matches!(op, Op::Block { block, .. } if block.is_full())));
            assert!(joined(&ops) == data, "pieces of {piece}: bytes differ");
        }
    }

    #[test]
    fn unusual_frames_take_the_ordinary_path() {
        let mut d = DirectReceive::new(BlockPool::new());
        d.begin(4, Some(10));
        let mut buf = BytesMut::from(&data_frame(5, 0, b"abc")[..]);
        assert!(!d.start_frame(&mut buf, 1 << 20), "another transfer");
        let mut buf = BytesMut::from(&data_frame(4, 3, b"abc")[..]);
        assert!(!d.start_frame(&mut buf, 1 << 20), "a gap");
        let mut buf = BytesMut::from(&data_frame(4, 0, b"abcdefghijk")[..]);
        assert!(!d.start_frame(&mut buf, 1 << 20), "past the size");
        assert!(!d.start_frame(&mut buf, 8), "over the frame limit");
        let mut buf = BytesMut::from(&data_frame(4, 0, b"")[..]);
        assert!(!d.start_frame(&mut buf, 1 << 20), "an empty payload");
        let mut buf = BytesMut::from(&Frame::Info("BACKUPDONE".into()).encode()[..]);
        assert!(!d.start_frame(&mut buf, 1 << 20), "not BACKUPDATA");
        let mut buf = BytesMut::from(&data_frame(4, 0, b"abc")[..]);
        assert!(d.start_frame(&mut buf, 1 << 20));
        assert!(d.receiving());
        let mut out = VecDeque::new();
        d.fill(&mut buf, &mut out);
        assert!(!d.receiving() && buf.is_empty() && out.is_empty());
        d.finish(&mut out);
        assert!(
            matches!(out.pop_front(), Some(Op::Block { transfer: 4, offset: 0, block }) if block.filled() == b"abc")
        );
        assert!(!d.active());
    }

    #[test]
    fn a_pool_run_dry_starves_until_a_block_returns() {
        let pool = BlockPool::new();
        let held: Vec<_> = std::iter::from_fn(|| pool.take()).collect();
        let mut d = DirectReceive::new(pool.clone());
        d.begin(1, None);
        let mut buf = BytesMut::from(&data_frame(1, 0, b"xyz")[..]);
        assert!(d.start_frame(&mut buf, 1 << 20));
        let mut out = VecDeque::new();
        d.fill(&mut buf, &mut out);
        assert!(d.starved() && d.room().is_none());
        drop(held);
        d.fill(&mut buf, &mut out);
        assert!(!d.starved() && !d.receiving());
    }

    #[test]
    fn reads_stop_at_the_next_header_or_frame_end() {
        assert_eq!(DirectReceive::read_limit(&[]), Some(DATA_HEADER_LEN));
        let frame = Frame::Info("PING".into()).encode();
        assert_eq!(DirectReceive::read_limit(&frame[..3]), Some(DATA_HEADER_LEN - 3));
        let frame = Frame::Info("x".repeat(100)).encode();
        assert_eq!(DirectReceive::read_limit(&frame[..30]), Some(frame.len() - 30));
        assert_eq!(DirectReceive::read_limit(&frame), None);
    }
}
