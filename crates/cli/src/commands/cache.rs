//! `ferry cache [--json]`: what the server's file cache holds, in eviction
//! order (the next victim first), with its hit ratios.

use anyhow::Context;
use ferry_transfer::client;

use crate::cli::LsArgs;
use crate::format;

pub async fn run(args: LsArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let opts = super::client_options(&args.client);
    let snap = client::list_cache(&opts).await.context("cache")?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&snap)?);
        return Ok(());
    }
    if !snap.entries.is_empty() {
        outln!("{:>10}  {:>6}  {:>9}  name (next to be evicted first)", "size", "hits", "age");
    }
    for e in &snap.entries {
        outln!("{:>10}  {:>6}  {:>8.1}s  {}", format::bytes(e.size), e.hits, e.age_ms as f64 / 1000.0, e.name);
    }
    outln!(
        "{} files, {} of {} held ({}); hit ratio {:.1}% of requests, {:.1}% of bytes ({} hits, {} misses); {} evictions",
        snap.entries.len(),
        format::bytes(snap.bytes_held),
        format::bytes(snap.max_bytes),
        snap.policy,
        snap.object_hit_ratio * 100.0,
        snap.byte_hit_ratio * 100.0,
        snap.hits,
        snap.misses,
        snap.evictions
    );
    Ok(())
}
