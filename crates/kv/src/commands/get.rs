//! `get`, `gets`, `gat`, `gats`: one `VALUE` block per hit, then `END`.

use bytes::BufMut;

use super::{Ctx, expiry, server_error};
use crate::stats::KvStats;

pub(super) fn get(cx: &mut Ctx<'_>, keys: &[bytes::Bytes], with_cas: bool, touch: Option<i64>) {
    for key in keys {
        KvStats::add(&cx.stats.cmd_get, 1);
        let item = match touch {
            None => cx.store.get(key, cx.now),
            Some(exptime) => {
                KvStats::add(&cx.stats.cmd_touch, 1);
                cx.wrote = true;
                match cx.store.get_and_touch(key, expiry(exptime, cx.now), cx.now) {
                    Ok(item) => item,
                    Err(e) => {
                        server_error(cx.out, &e);
                        return;
                    }
                }
            }
        };
        match item {
            Some(item) => {
                KvStats::add(&cx.stats.get_hits, 1);
                if touch.is_some() {
                    KvStats::add(&cx.stats.touch_hits, 1);
                }
                cx.out.put_slice(b"VALUE ");
                cx.out.put_slice(key);
                cx.out.put_slice(format!(" {} {}", item.flags, item.value.len()).as_bytes());
                if with_cas {
                    cx.out.put_slice(format!(" {}", item.cas).as_bytes());
                }
                cx.out.put_slice(b"\r\n");
                cx.out.put_slice(&item.value);
                cx.out.put_slice(b"\r\n");
            }
            None => {
                KvStats::add(&cx.stats.get_misses, 1);
                if touch.is_some() {
                    KvStats::add(&cx.stats.touch_misses, 1);
                }
            }
        }
    }
    cx.out.put_slice(b"END\r\n");
}
