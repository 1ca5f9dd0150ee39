//! `flush_all [delay] [noreply]`: everything stored so far becomes invalid
//! now, or once the delay has passed (memcached's exptime rule for it).

use bytes::BufMut;

use super::{Ctx, expiry, server_error};
use crate::stats::KvStats;

pub(super) fn flush_all(cx: &mut Ctx<'_>, delay: i64, noreply: bool) {
    KvStats::add(&cx.stats.cmd_flush, 1);
    cx.wrote = true;
    let at = if delay > 0 { expiry(delay, cx.now).max(cx.now) } else { cx.now };
    match cx.store.flush_all(at, cx.now) {
        Ok(()) => {
            if !noreply {
                cx.out.put_slice(b"OK\r\n");
            }
        }
        Err(e) => {
            if !noreply {
                server_error(cx.out, &e);
            }
        }
    }
}
