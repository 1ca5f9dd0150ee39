//! `stats`: memcached's general statistics (the fields clients and
//! dashboards read); sub-statistics answer as memcached does when it has
//! none to give.

use std::sync::atomic::Ordering::Relaxed;

use bytes::BufMut;

use super::Ctx;
use crate::stats::{KvStats, Stat};

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
    let st = cx.stats.all();
    let store = cx.store.stats();
    let uptime = cx.now.saturating_sub(cx.server.started_unix);
    let out = &mut *cx.out;
    line(out, "pid", std::process::id() as u64);
    line(out, "uptime", uptime);
    line(out, "time", cx.now);
    out.put_slice(format!("STAT version {}\r\n", cx.server.version).as_bytes());
    line(out, "pointer_size", 64);
    line(out, "curr_connections", st.connections.curr.load(Relaxed));
    line(out, "total_connections", st.connections.total.load(Relaxed));
    counter(out, st, Stat::CmdGet);
    counter(out, st, Stat::CmdSet);
    counter(out, st, Stat::CmdFlush);
    counter(out, st, Stat::CmdTouch);
    counter(out, st, Stat::GetHits);
    counter(out, st, Stat::GetMisses);
    line(out, "get_expired", store.expired_unfetched);
    counter(out, st, Stat::DeleteMisses);
    counter(out, st, Stat::DeleteHits);
    counter(out, st, Stat::IncrMisses);
    counter(out, st, Stat::IncrHits);
    counter(out, st, Stat::DecrMisses);
    counter(out, st, Stat::DecrHits);
    counter(out, st, Stat::CasMisses);
    counter(out, st, Stat::CasHits);
    counter(out, st, Stat::CasBadval);
    counter(out, st, Stat::TouchHits);
    counter(out, st, Stat::TouchMisses);
    counter(out, st, Stat::BytesRead);
    counter(out, st, Stat::BytesWritten);
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

/// A per-request counter's line, summed over the threads.
fn counter(out: &mut bytes::BytesMut, stats: &KvStats, stat: Stat) {
    line(out, stat.name(), stats.get(stat));
}

fn line(out: &mut bytes::BytesMut, name: &str, value: u64) {
    out.put_slice(format!("STAT {name} {value}\r\n").as_bytes());
}
