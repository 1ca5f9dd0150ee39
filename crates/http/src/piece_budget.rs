//! A server-wide bound on the bytes that streamed downloads hold in memory.
//!
//! A streamed download holds at most two pieces: the one the socket is
//! taking and the one read ahead. Pieces grow to 1 MiB for throughput, so
//! without a shared bound a thousand downloads could hold 2 GiB. Each piece
//! larger than [`SMALL_PIECE`] is reserved from this budget and given back
//! when the piece is dropped (sent, or its connection gone). When the budget
//! is spent, a download reads small pieces outside it instead of waiting, so
//! stalled clients sitting on their pieces cannot stop the others. Memory
//! held by streamed pieces is therefore at most the budget plus two small
//! pieces per open connection.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The piece a download reads when the budget cannot cover a larger one.
pub const SMALL_PIECE: usize = 64 << 10;

#[derive(Debug)]
pub struct PieceBudget {
    bytes: Arc<Semaphore>,
}

/// A piece's share of the budget, given back when this is dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl PieceBudget {
    /// A budget of `max_bytes` (capped at what a semaphore can count).
    pub fn new(max_bytes: usize) -> PieceBudget {
        PieceBudget { bytes: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))) }
    }

    /// How many bytes to read for a piece that wants `want`, and its share
    /// of the budget: `want` if the budget has it, else at most
    /// [`SMALL_PIECE`] outside the budget. Never waits.
    pub fn reserve(&self, want: usize) -> (usize, Reservation) {
        if want <= SMALL_PIECE {
            return (want, Reservation { _permit: None });
        }
        let permit = u32::try_from(want).ok().and_then(|n| self.bytes.clone().try_acquire_many_owned(n).ok());
        match permit {
            Some(permit) => (want, Reservation { _permit: Some(permit) }),
            None => (SMALL_PIECE, Reservation { _permit: None }),
        }
    }

    /// Bytes of the budget not reserved now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// The bytes of a piece with its reservation: the budget gets the share
/// back when the last `Bytes` of the piece is dropped.
#[derive(Debug)]
pub struct Piece {
    bytes: Vec<u8>,
    _reservation: Reservation,
}

impl Piece {
    pub fn new(bytes: Vec<u8>, reservation: Reservation) -> Piece {
        Piece { bytes, _reservation: reservation }
    }
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn large_pieces_come_from_the_budget_small_ones_do_not() {
        let budget = PieceBudget::new(1 << 20);
        let (len, small) = budget.reserve(1000);
        assert_eq!((len, budget.available()), (1000, 1 << 20));
        let (len, a) = budget.reserve(768 << 10);
        assert_eq!((len, budget.available()), (768 << 10, 256 << 10));
        // Not enough left for 512 KiB: a small piece, outside the budget.
        let (len, b) = budget.reserve(512 << 10);
        assert_eq!((len, budget.available()), (SMALL_PIECE, 256 << 10));
        let (len, c) = budget.reserve(256 << 10);
        assert_eq!((len, budget.available()), (256 << 10, 0));
        drop((small, b));
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 768 << 10);
        // A piece's share comes back when its last Bytes goes.
        let piece = Bytes::from_owner(Piece::new(vec![1; 10], c));
        let copy = piece.slice(2..4);
        drop(piece);
        assert_eq!(budget.available(), 768 << 10);
        drop(copy);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[test]
    fn an_empty_budget_still_serves_small_pieces() {
        let budget = PieceBudget::new(0);
        assert_eq!(budget.reserve(1 << 20).0, SMALL_PIECE);
        assert_eq!(budget.reserve(10).0, 10);
    }
}
