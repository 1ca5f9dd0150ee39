//! `touch <key> <exptime> [noreply]`.

use super::{Ctx, answer, expiry};
use crate::stats::KvStats;

pub(super) fn touch(cx: &mut Ctx<'_>, key: &[u8], exptime: i64, noreply: bool) {
    KvStats::add(&cx.stats.cmd_touch, 1);
    cx.wrote = true;
    let result = cx.store.touch(key, expiry(exptime, cx.now), cx.now).map(|found| -> &[u8] {
        if found {
            KvStats::add(&cx.stats.touch_hits, 1);
            b"TOUCHED\r\n"
        } else {
            KvStats::add(&cx.stats.touch_misses, 1);
            b"NOT_FOUND\r\n"
        }
    });
    answer(cx.out, noreply, result);
}
