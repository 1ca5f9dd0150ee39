//! The command line: every subcommand and flag, with `--help` text.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ferry", version = ferry_core::version::version(), about = "A file server that can be upgraded while it serves", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (all enabled services) from a data directory
    Serve(ServeArgs),
    /// Download a file; resumes a partial download and retries on drops
    Get(GetArgs),
    /// Upload a file or standard input; resumes a partial upload and retries on drops
    Put(PutArgs),
    /// List the server's files
    Ls(LsArgs),
    /// Show the server's file cache: entries (next to be evicted first), hit ratios, evictions
    Cache(LsArgs),
    /// Show a running server's pid, version, listeners, connections and transfers
    Status(StatusArgs),
    /// Replace the running server with a new executable; every connection and transfer carries on
    Upgrade(UpgradeArgs),
    /// Run a backup node: mirror every file the server stores into a directory, and keep it caught up
    Backup(BackupArgs),
    /// Print the effective configuration (TOML) with every default
    Config(ServeArgs),
    /// Keep a folder in sync with a server, and through it with every other client
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Server host name or address
    pub host: String,
    /// Folder to keep in sync (created if missing); the client's state lives in FOLDER/.ferry-sync/
    pub folder: PathBuf,
    /// The server's sync port, for this client's updates
    #[arg(long, default_value_t = ferry_sync::client::DEFAULT_PORT, value_name = "N")]
    pub port: u16,
    /// The server's sync push port, for the server's updates to this client
    #[arg(long, default_value_t = ferry_sync::client::DEFAULT_PUSH_PORT, value_name = "N")]
    pub push_port: u16,
    /// Bytes per chunk sent (suffixes K, M); at most the server's chunk limit (1M unless configured)
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = crate::format::parse_rate)]
    pub chunk_size: u64,
    /// Limit the upload rate, in bytes per second (suffixes K, M, G)
    #[arg(long, value_name = "RATE", value_parser = crate::format::parse_rate)]
    pub limit_rate: Option<u64>,
    /// This client's id (letters, digits, '.', '_', '-') [default: the one saved in the folder, or a new one]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// No progress or per-file lines, even on a terminal
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Data directory of the server [default: ./ferry-data]
    #[arg(long, value_name = "DIR", default_value = "ferry-data")]
    pub data: PathBuf,
    /// New executable [default: the one the server was started from]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Server settings; each flag overrides the config file.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file (see `ferry config` for every key)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./ferry-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Directory of served files [default: <data>/files]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// Transfer service port; 0 picks a free one [default: 7070]
    #[arg(long, value_name = "N")]
    pub transfer_port: Option<u16>,
    /// HTTP gateway port [default: 7080] (the gateway arrives in a later release)
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,
    /// kv (memcached protocol) port [default: 11211]
    #[arg(long, value_name = "N")]
    pub kv_port: Option<u16>,
    /// Sync service port, for clients' updates; 0 picks a free one [default: 7071]
    #[arg(long, value_name = "N")]
    pub sync_port: Option<u16>,
    /// Sync push port, for the server's updates to clients; 0 picks a free one [default: 7072]
    #[arg(long, value_name = "N")]
    pub sync_push_port: Option<u16>,
    /// Do not start the HTTP gateway
    #[arg(long)]
    pub no_http: bool,
    /// Do not start the kv service
    #[arg(long)]
    pub no_kv: bool,
    /// Do not start the sync service
    #[arg(long)]
    pub no_sync: bool,
}

/// Where a client connects, and how it copes with trouble.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address HOST:PORT
    #[arg(long, env = "FERRY_SERVER", default_value = ferry_transfer::client::DEFAULT_SERVER, value_name = "HOST:PORT")]
    pub server: String,
    /// Failed attempts in a row before giving up (0 disables retrying)
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub retries: u32,
    /// Limit the transfer rate, in bytes per second (suffixes K, M, G)
    #[arg(long, value_name = "RATE", value_parser = crate::format::parse_rate)]
    pub limit_rate: Option<u64>,
    /// Give up on a connection that is silent this many seconds
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// No progress bar or notices
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Name of the file on the server
    pub name: String,
    /// Where to write it (`-` for standard output) [default: the name's last component]
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// File to upload, or `-` for standard input
    pub path: PathBuf,
    /// Name to store it under [default: the file's name]
    #[arg(long = "as", value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Directory that receives the server's files (created if missing)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Server address HOST:PORT
    #[arg(long, env = "FERRY_SERVER", default_value = ferry_transfer::client::DEFAULT_SERVER, value_name = "HOST:PORT")]
    pub server: String,
    /// Give up on a connection that is silent this many seconds (then reconnect)
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// Use a directory that already holds other files (files the server does not have are deleted)
    #[arg(long)]
    pub adopt: bool,
    /// No status line or notices
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Data directory of the server [default: ./ferry-data]
    #[arg(long, value_name = "DIR", default_value = "ferry-data")]
    pub data: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}
