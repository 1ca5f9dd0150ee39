//! `incr` / `decr <key> <delta> [noreply]`: incr wraps at 2^64, decr stops
//! at 0, a value that is not a number is refused.

use bytes::BufMut;

use super::{Ctx, server_error};
use crate::stats::KvStats;
use crate::store::Arith;

pub(super) fn arith(cx: &mut Ctx<'_>, incr: bool, key: &[u8], delta: u64, noreply: bool) {
    cx.wrote = true;
    let (hits, misses) =
        if incr { (&cx.stats.incr_hits, &cx.stats.incr_misses) } else { (&cx.stats.decr_hits, &cx.stats.decr_misses) };
    let reply = match cx.store.arith(key, incr, delta, cx.now, None) {
        Ok((Arith::Value(v), _)) => {
            KvStats::add(hits, 1);
            format!("{v}\r\n").into_bytes()
        }
        Ok((Arith::NotFound, _)) => {
            KvStats::add(misses, 1);
            b"NOT_FOUND\r\n".to_vec()
        }
        Ok((Arith::NonNumeric, _)) => b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n".to_vec(),
        Err(e) => {
            if !noreply {
                server_error(cx.out, &e);
            }
            return;
        }
    };
    if !noreply {
        cx.out.put_slice(&reply);
    }
}
