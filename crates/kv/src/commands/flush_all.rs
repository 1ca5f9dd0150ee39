//! `flush_all [delay] [noreply]`: everything stored so far becomes invalid
//! now, or once the delay has passed (memcached's exptime rule for it).

use super::{Ctx, answer, expiry};
use crate::stats::KvStats;

pub(super) fn flush_all(cx: &mut Ctx<'_>, delay: i64, noreply: bool) {
    KvStats::add(&cx.stats.cmd_flush, 1);
    cx.wrote = true;
    let at = if delay > 0 { expiry(delay, cx.now).max(cx.now) } else { cx.now };
    let result = cx.store.flush_all(at, cx.now).map(|()| -> &[u8] { b"OK\r\n" });
    answer(cx.out, noreply, result);
}
