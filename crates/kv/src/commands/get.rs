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
                cx.out.put_u8(b' ');
                put_number(cx.out, u64::from(item.flags));
                cx.out.put_u8(b' ');
                put_number(cx.out, item.value.len() as u64);
                if with_cas {
                    cx.out.put_u8(b' ');
                    put_number(cx.out, item.cas);
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

/// Decimal digits without an allocation (once per hit on the hot path).
fn put_number(out: &mut bytes::BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}
