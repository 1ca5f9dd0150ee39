//! `ferry upgrade [--data DIR] [--binary PATH]`: exits 0 only once the new
//! process serves every connection.

use anyhow::Context;
use ferry_core::server::request_upgrade;

use crate::cli::UpgradeArgs;

pub async fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    // The server resolves paths from its own working directory.
    let binary = match &args.binary {
        Some(path) => Some(std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?),
        None => None,
    };
    match request_upgrade(&args.data, binary).await? {
        Ok(report) => {
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let g = &report.session_gap;
                outln!(
                    "upgraded: pid {} ({}) -> pid {} ({}), {} sessions moved in {} batches; \
                     pause gap per session p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; total handover {:.2} ms",
                    report.old_pid,
                    report.old_version,
                    report.new_pid,
                    report.new_version,
                    report.sessions_moved,
                    report.batches,
                    ms(g.p50_us),
                    ms(g.p99_us),
                    ms(g.max_us),
                    ms(report.pause_gap_us)
                );
            }
            Ok(())
        }
        Err(reason) => anyhow::bail!("upgrade failed, the old server is still serving: {reason}"),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
