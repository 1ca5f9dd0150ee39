//! `ferry ls [--json]`.

use anyhow::Context;
use ferry_transfer::client;

use crate::cli::LsArgs;
use crate::format;

pub async fn run(args: LsArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let opts = super::client_options(&args.client);
    let entries = client::list(&opts).await.context("ls")?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for e in &entries {
        outln!("{:>10}  {}", format::bytes(e.size), e.name);
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    outln!("{} files, {}", entries.len(), format::bytes(total));
    Ok(())
}
