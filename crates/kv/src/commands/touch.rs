//! `touch <key> <exptime> [noreply]`.

use super::{Ctx, answer, expiry};
use crate::stats::Stat;

pub(super) fn touch(cx: &mut Ctx<'_>, key: &[u8], exptime: i64, noreply: bool) {
    cx.stats.add(Stat::CmdTouch, 1);
    cx.wrote = true;
    let result = cx.store.touch(key, expiry(exptime, cx.now), cx.now).map(|found| -> &[u8] {
        if found {
            cx.stats.add(Stat::TouchHits, 1);
            b"TOUCHED\r\n"
        } else {
            cx.stats.add(Stat::TouchMisses, 1);
            b"NOT_FOUND\r\n"
        }
    });
    answer(cx.out, noreply, result);
}
