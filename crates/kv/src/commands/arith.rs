//! `incr` / `decr <key> <delta> [noreply]`: incr wraps at 2^64, decr stops
//! at 0, a value that is not a number is refused.

use super::{Ctx, answer};
use crate::stats::KvStats;
use crate::store::Arith;

pub(super) fn arith(cx: &mut Ctx<'_>, incr: bool, key: &[u8], delta: u64, noreply: bool) {
    cx.wrote = true;
    let (hits, misses) =
        if incr { (&cx.stats.incr_hits, &cx.stats.incr_misses) } else { (&cx.stats.decr_hits, &cx.stats.decr_misses) };
    let number;
    let result: Result<&[u8], _> = match cx.store.arith(key, incr, delta, cx.now, None) {
        Ok((Arith::Value(v), _)) => {
            KvStats::add(hits, 1);
            number = format!("{v}\r\n");
            Ok(number.as_bytes())
        }
        Ok((Arith::NotFound, _)) => {
            KvStats::add(misses, 1);
            Ok(b"NOT_FOUND\r\n")
        }
        Ok((Arith::NonNumeric, _)) => Ok(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        Err(e) => Err(e),
    };
    answer(cx.out, noreply, result);
}
