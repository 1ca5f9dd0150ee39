//! `stats`: memcached's general statistics (the fields clients and
//! dashboards read); sub-statistics answer as memcached does when it has
//! none to give.

use bytes::BufMut;

use super::Ctx;
use crate::stats::KvStats;

pub(super) fn stats(cx: &mut Ctx<'_>, args: &[String]) {
    if let Some(sub) = args.first() {
        match sub.as_str() {
            // Known sub-statistics ferry keeps nothing for: an empty list.
            "items" | "slabs" | "sizes" | "conns" | "extstore" => {
                cx.out.put_slice(b"END\r\n");
            }
            "settings" => {
                let s = cx.server;
                line(cx.out, "maxbytes", s.max_memory);
                line(cx.out, "maxconns", s.max_connections as u64);
                line(cx.out, "evictions", 1);
                cx.out.put_slice(b"END\r\n");
            }
            "reset" => cx.out.put_slice(b"RESET\r\n"),
            _ => cx.out.put_slice(b"ERROR\r\n"),
        }
        return;
    }
    let st = cx.stats;
    let store = cx.store.stats();
    let g = KvStats::get;
    let uptime = cx.now.saturating_sub(cx.server.started_unix);
    let out = &mut *cx.out;
    line(out, "pid", std::process::id() as u64);
    line(out, "uptime", uptime);
    line(out, "time", cx.now);
    out.put_slice(format!("STAT version {}\r\n", cx.server.version).as_bytes());
    line(out, "pointer_size", 64);
    line(out, "curr_connections", g(&st.curr_connections));
    line(out, "total_connections", g(&st.total_connections));
    line(out, "cmd_get", g(&st.cmd_get));
    line(out, "cmd_set", g(&st.cmd_set));
    line(out, "cmd_flush", g(&st.cmd_flush));
    line(out, "cmd_touch", g(&st.cmd_touch));
    line(out, "get_hits", g(&st.get_hits));
    line(out, "get_misses", g(&st.get_misses));
    line(out, "get_expired", store.expired_unfetched);
    line(out, "delete_misses", g(&st.delete_misses));
    line(out, "delete_hits", g(&st.delete_hits));
    line(out, "incr_misses", g(&st.incr_misses));
    line(out, "incr_hits", g(&st.incr_hits));
    line(out, "decr_misses", g(&st.decr_misses));
    line(out, "decr_hits", g(&st.decr_hits));
    line(out, "cas_misses", g(&st.cas_misses));
    line(out, "cas_hits", g(&st.cas_hits));
    line(out, "cas_badval", g(&st.cas_badval));
    line(out, "touch_hits", g(&st.touch_hits));
    line(out, "touch_misses", g(&st.touch_misses));
    line(out, "bytes_read", g(&st.bytes_read));
    line(out, "bytes_written", g(&st.bytes_written));
    line(out, "limit_maxbytes", cx.server.max_memory);
    line(out, "threads", std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1));
    line(out, "bytes", store.bytes);
    line(out, "curr_items", store.curr_items);
    line(out, "total_items", store.total_items);
    line(out, "evictions", store.evictions);
    line(out, "reclaimed", store.reclaimed);
    line(out, "log_bytes", store.log_bytes);
    line(out, "live_log_bytes", store.live_log_bytes);
    line(out, "compactions", store.compactions);
    out.put_slice(b"END\r\n");
}

fn line(out: &mut bytes::BytesMut, name: &str, value: u64) {
    out.put_slice(format!("STAT {name} {value}\r\n").as_bytes());
}
