//! `ferry get NAME [-o PATH|-]`.

use std::path::PathBuf;

use anyhow::Context;
use ferry_transfer::client::{self, GetTarget};

use crate::cli::GetArgs;
use crate::progress::Progress;

pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let opts = super::client_options(&args.client);
    let target = match &args.output {
        Some(path) if path.as_os_str() == "-" => GetTarget::Stdout,
        Some(path) => GetTarget::File(path.clone()),
        None => {
            let base = args.name.rsplit('/').next().filter(|b| !b.is_empty() && *b != "." && *b != "..");
            let base = base.with_context(|| format!("cannot derive a local file name from {:?}; use -o", args.name))?;
            GetTarget::File(PathBuf::from(base))
        }
    };
    let mut progress = Progress::new(&args.name, args.client.quiet);
    let result =
        client::get(&opts, &args.name, target, &mut progress).await.with_context(|| format!("get {}", args.name))?;
    tracing::info!(size = result.size, blake3 = %result.blake3, "downloaded");
    Ok(())
}
