//! `ferry status [--data DIR] [--json]`.

use ferry_core::server::query_status;

use crate::cli::StatusArgs;
use crate::format;

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let status = query_status(&args.data).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    outln!("ferry {} — pid {}, up {}s", status.version, status.pid, status.uptime_secs);
    outln!("data {}  root {}", status.data_dir, status.root);
    for (name, addr) in &status.listeners {
        outln!("  {name:<10} {addr}");
    }
    let c = &status.counters;
    outln!(
        "connections {} open, {} total; sent {}, received {}; transfers {} ok, {} failed",
        status.connections,
        c.connections_total,
        format::bytes(c.bytes_sent),
        format::bytes(c.bytes_received),
        c.transfers_completed,
        c.transfers_failed
    );
    if !status.upgrades.is_empty() {
        outln!("upgrades:");
        for u in &status.upgrades {
            let ms = |us: u64| us as f64 / 1000.0;
            let mut gap = u.pause_gap_us.map(|g| format!("handover {:.2} ms", ms(g))).unwrap_or_else(|| "-".into());
            if let Some(s) = u.session_gap.filter(|s| s.sessions > 0) {
                gap += &format!(
                    ", session gap p50 {:.2} / p99 {:.2} / max {:.2} ms",
                    ms(s.p50_us),
                    ms(s.p99_us),
                    ms(s.max_us)
                );
            }
            outln!(
                "  {} pid {} ({}) -> {} ({}) {gap}, {} sessions: {}",
                u.unix_ms,
                u.old_pid,
                u.old_version,
                u.new_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                u.new_version.as_deref().unwrap_or("-"),
                u.sessions_moved,
                u.outcome
            );
        }
    }
    if let Some(backups) = status.services.get("transfer").and_then(|t| t["backups"].as_array())
        && !backups.is_empty()
    {
        outln!("backup nodes:");
        for b in backups {
            let lag_files = b["lag_files"].as_u64().unwrap_or(0);
            let lag = format!("{lag_files} files, {}", format::bytes(b["lag_bytes"].as_u64().unwrap_or(0)));
            outln!(
                "  {} {} {}, lag {lag}; {} files held",
                b["node"].as_str().unwrap_or("?"),
                b["peer"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?").replace('-', " "),
                b["files_held"].as_u64().unwrap_or(0)
            );
        }
    }
    if !status.transfers.is_empty() {
        outln!("transfers in progress:");
        for t in &status.transfers {
            let size = t.size.map(format::bytes).unwrap_or_else(|| "?".into());
            let pct = t.size.filter(|s| *s > 0).map(|s| format!(" ({:.0}%)", t.offset as f64 * 100.0 / s as f64));
            outln!("  {:?} {} {}/{}{}", t.kind, t.name, format::bytes(t.offset), size, pct.unwrap_or_default());
        }
    }
    Ok(())
}
