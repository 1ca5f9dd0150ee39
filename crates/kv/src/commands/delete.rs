//! `delete <key> [noreply]`.

use super::{Ctx, answer};
use crate::stats::Stat;

pub(super) fn delete(cx: &mut Ctx<'_>, key: &[u8], noreply: bool) {
    cx.wrote = true;
    let result = cx.store.delete(key, cx.now).map(|found| -> &[u8] {
        if found {
            cx.stats.add(Stat::DeleteHits, 1);
            b"DELETED\r\n"
        } else {
            cx.stats.add(Stat::DeleteMisses, 1);
            b"NOT_FOUND\r\n"
        }
    });
    answer(cx.out, noreply, result);
}
