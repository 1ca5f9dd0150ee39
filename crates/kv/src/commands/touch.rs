//! `touch <key> <exptime> [noreply]`.

use bytes::BufMut;

use super::{Ctx, expiry, server_error};
use crate::stats::KvStats;

pub(super) fn touch(cx: &mut Ctx<'_>, key: &[u8], exptime: i64, noreply: bool) {
    KvStats::add(&cx.stats.cmd_touch, 1);
    cx.wrote = true;
    let reply: &[u8] = match cx.store.touch(key, expiry(exptime, cx.now), cx.now) {
        Ok(true) => {
            KvStats::add(&cx.stats.touch_hits, 1);
            b"TOUCHED\r\n"
        }
        Ok(false) => {
            KvStats::add(&cx.stats.touch_misses, 1);
            b"NOT_FOUND\r\n"
        }
        Err(e) => {
            if !noreply {
                server_error(cx.out, &e);
            }
            return;
        }
    };
    if !noreply {
        cx.out.put_slice(reply);
    }
}
