//! `ferry put PATH|- [--as NAME]`.

use anyhow::Context;
use ferry_transfer::client::{self, PutSource};

use crate::cli::PutArgs;
use crate::progress::Progress;

pub async fn run(args: PutArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let opts = super::client_options(&args.client);
    let stdin = args.path.as_os_str() == "-";
    let name = match (&args.name, stdin) {
        (Some(name), _) => name.clone(),
        (None, true) => anyhow::bail!("uploading standard input needs --as NAME"),
        (None, false) => args
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| format!("cannot derive a name from {}; use --as", args.path.display()))?,
    };
    let source = if stdin { PutSource::Stdin } else { PutSource::File(args.path.clone()) };
    let mut progress = Progress::new(&name, args.client.quiet);
    let result = client::put(&opts, source, &name, &mut progress).await.with_context(|| format!("put {name}"))?;
    tracing::info!(size = result.size, blake3 = %result.blake3, "stored");
    Ok(())
}
