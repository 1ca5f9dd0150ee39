//! The `ferry sync` client: keeps a folder in sync with the server and, through it, with every other
//! client.
//!
//! On connect it reconciles its metadata with the server's META-DATA (the seed's four rules, with
//! conflicted copies instead of lost edits: [`crate::reconcile`]); then it watches the folder and sends
//! what changes (several files at once, chunks interleaved) on the update connection, and applies what
//! the server pushes on the other. When the server goes away it reconnects with backoff; a live upgrade
//! of the server does not disconnect it at all.

pub mod events;
mod folder;
pub mod options;
mod push_conn;
mod rate_limit;
mod session;
mod shared;
mod state_file;
mod update_conn;
mod watcher;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use events::{Direction, Silent, SyncEvent, SyncObserver};
pub use folder::STATE_DIR;
pub use options::{DEFAULT_CHUNK_SIZE, DEFAULT_PORT, DEFAULT_PUSH_PORT, SyncOptions};

use folder::Folder;
use session::SessionError;
use shared::Shared;
use state_file::StateFiles;

/// First wait before reconnecting.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// How often changed metadata is saved.
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Options(String),
    #[error("{context}: {source}")]
    Folder { context: String, source: std::io::Error },
    #[error("cannot watch the folder: {0}")]
    Watch(#[from] notify::Error),
    #[error("{0}")]
    Server(String),
}

/// Syncs `options.folder` until `stop` is cancelled (SIGINT, SIGTERM), reconnecting whenever the
/// server goes away. Returns an error only for what retrying cannot fix.
pub async fn run(
    options: SyncOptions,
    observer: Arc<dyn SyncObserver>,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    options.validate().map_err(ClientError::Options)?;
    let opened = {
        let options = options.clone();
        tokio::task::spawn_blocking(move || open(options)).await.map_err(|e| ClientError::Options(e.to_string()))??
    };
    let (folder, state, client_id, metadata) = opened;
    let shared = Arc::new(Shared::new(folder, state, client_id, metadata, options, observer));
    let _watcher = watcher::start(shared.clone(), stop.clone())?;
    let saver = spawn_saver(shared.clone(), stop.clone());
    let mut backoff = FIRST_BACKOFF;
    let result = loop {
        let started = tokio::time::Instant::now();
        match session::run(&shared, &stop).await {
            Ok(()) => break Ok(()),
            Err(SessionError::Fatal(reason)) => break Err(ClientError::Server(reason)),
            Err(SessionError::Retry(reason)) => {
                tracing::info!("disconnected: {reason}; retrying in {backoff:?}");
                shared.observer.event(SyncEvent::Disconnected { reason });
            }
        }
        if started.elapsed() >= STABLE {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.options.max_backoff);
    };
    stop.cancel();
    let _ = saver.await;
    let last = shared.clone();
    let _ = tokio::task::spawn_blocking(move || last.save()).await;
    result
}

type Opened = (Folder, StateFiles, crate::ClientId, crate::LocalMetadata);

fn open(options: SyncOptions) -> Result<Opened, ClientError> {
    let max_name = options.limits.max_name_len();
    let max_files = options.limits.max_metadata_entries as usize;
    let folder_err = |context: String| move |source| ClientError::Folder { context, source };
    let folder = Folder::open(&options.folder, max_name, max_files)
        .map_err(folder_err(format!("cannot open {}", options.folder.display())))?;
    let state = StateFiles::lock(folder.state_dir())
        .map_err(folder_err(format!("cannot lock {}", folder.state_dir().display())))?;
    let client_id =
        state.client_id(options.client_id.as_ref()).map_err(folder_err("cannot read the client id".into()))?;
    let metadata = state.load(max_name).map_err(folder_err("cannot read the sync metadata".into()))?;
    Ok((folder, state, client_id, metadata))
}

/// Saves changed metadata now and then (and lets a crash lose at most that much bookkeeping, never a
/// file: see `state_file`).
fn spawn_saver(shared: Arc<Shared>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SAVE_EVERY) => {}
            }
            let worker = shared.clone();
            let _ = tokio::task::spawn_blocking(move || worker.save()).await;
        }
    })
}
