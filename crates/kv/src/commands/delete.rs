//! `delete <key> [noreply]`.

use bytes::BufMut;

use super::{Ctx, server_error};
use crate::stats::KvStats;

pub(super) fn delete(cx: &mut Ctx<'_>, key: &[u8], noreply: bool) {
    cx.wrote = true;
    let reply: &[u8] = match cx.store.delete(key, cx.now) {
        Ok(true) => {
            KvStats::add(&cx.stats.delete_hits, 1);
            b"DELETED\r\n"
        }
        Ok(false) => {
            KvStats::add(&cx.stats.delete_misses, 1);
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
