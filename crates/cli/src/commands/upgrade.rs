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
                outln!(
                    "upgraded: pid {} ({}) -> pid {} ({}), pause gap {:.2} ms, {} sessions moved",
                    report.old_pid,
                    report.old_version,
                    report.new_pid,
                    report.new_version,
                    report.pause_gap_us as f64 / 1000.0,
                    report.sessions_moved
                );
            }
            Ok(())
        }
        Err(reason) => anyhow::bail!("upgrade failed, the old server is still serving: {reason}"),
    }
}
