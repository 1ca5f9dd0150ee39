//! `ferry backup --dir DIR`: a backup node. It registers with the server,
//! receives every upload as it arrives and whatever it missed, commits each
//! file under `DIR` atomically, and reconnects with backoff whenever the
//! connection ends, for as long as it runs.

mod aligned_block;
mod block_writes;
mod direct_file;
mod direct_receive;
mod link;
mod manifest;
mod node_dir;
mod observer;
mod writer;

pub use node_dir::META_DIR;
pub use observer::{BackupObserver, SilentBackup};

use std::path::PathBuf;
use std::time::Duration;

use super::{Backoff, ClientError};
use link::LinkEnd;
use node_dir::BackupDir;
use writer::Writer;

#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// `HOST:PORT` of the transfer service.
    pub server: String,
    /// The backup directory.
    pub dir: PathBuf,
    /// Largest frame accepted from the server.
    pub max_frame_bytes: u32,
    /// A server silent this long is given up on (it pings every 15 s).
    pub io_timeout: Duration,
    pub backoff: Backoff,
    /// Most files the directory may hold.
    pub max_files: usize,
    /// Use a directory that holds files but was never a backup directory
    /// (catch-up deletes those the server does not have).
    pub adopt: bool,
}

impl BackupOptions {
    pub fn new(server: &str, dir: PathBuf) -> BackupOptions {
        BackupOptions {
            server: server.to_string(),
            dir,
            max_frame_bytes: 16 << 20,
            io_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            max_files: 1_000_000,
            adopt: false,
        }
    }
}

/// Runs the node until `shutdown` completes. Fails only if the directory
/// cannot be used; a lost server is retried forever.
pub async fn run(
    opts: &BackupOptions,
    obs: &mut dyn BackupObserver,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let (path, adopt) = (opts.dir.clone(), opts.adopt);
    let dir = tokio::task::spawn_blocking(move || BackupDir::open(&path, adopt))
        .await
        .map_err(|e| ClientError::Local(format!("open task failed: {e}")))?
        .map_err(ClientError::Local)?;
    let id = dir.id.clone();
    let mut writer = Writer::start(dir).map_err(ClientError::Local)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        obs.connecting(&opts.server, failures);
        match link::serve(opts, &id, &mut writer, obs, &mut shutdown).await {
            LinkEnd::Shutdown => break,
            LinkEnd::Lost { registered, error } => {
                if registered {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                if matches!(&error, ClientError::Local(_)) {
                    writer.stop().await;
                    return Err(error);
                }
                let delay = opts.backoff.delay(failures);
                obs.disconnected(&error, delay);
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    writer.stop().await;
    Ok(())
}
