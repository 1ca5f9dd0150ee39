//! `delete <key> [noreply]`.

use super::{Ctx, answer};
use crate::stats::KvStats;

pub(super) fn delete(cx: &mut Ctx<'_>, key: &[u8], noreply: bool) {
    cx.wrote = true;
    let result = cx.store.delete(key, cx.now).map(|found| -> &[u8] {
        if found {
            KvStats::add(&cx.stats.delete_hits, 1);
            b"DELETED\r\n"
        } else {
            KvStats::add(&cx.stats.delete_misses, 1);
            b"NOT_FOUND\r\n"
        }
    });
    answer(cx.out, noreply, result);
}
