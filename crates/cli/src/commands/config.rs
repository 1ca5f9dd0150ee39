//! `ferry config`: the effective configuration, defaults included.

use anyhow::Context;
use ferry_core::Config;

use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = effective(&args)?;
    print!("{}", config.to_toml());
    Ok(())
}

/// Defaults, then the config file, then command-line flags.
pub fn effective(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if let Some(root) = &args.root {
        config.root = Some(root.clone());
    }
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(port) = args.transfer_port {
        config.transfer.port = port;
    }
    if let Some(port) = args.http_port {
        config.http.port = port;
    }
    if let Some(port) = args.kv_port {
        config.kv.port = port;
    }
    if let Some(port) = args.sync_port {
        config.sync.port = port;
    }
    if let Some(port) = args.sync_push_port {
        config.sync.push_port = port;
    }
    if args.no_http {
        config.http.enabled = false;
    }
    if args.no_kv {
        config.kv.enabled = false;
    }
    if args.no_sync {
        config.sync.enabled = false;
    }
    config.validate().context("invalid configuration")?;
    Ok(config)
}
