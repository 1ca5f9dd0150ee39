//! Watching the folder: notify's events, debounced (the folder must be quiet for `debounce`, tens of
//! milliseconds, or a burst must have lasted long enough), then each changed path looked at again on a
//! blocking thread. Events are bounded: when the channel overflows (or the kernel's queue did), the
//! next round rescans the whole folder instead.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shared::Shared;

/// Events buffered between the watcher's thread and the debouncer.
const EVENT_QUEUE: usize = 4096;
/// Paths looked at in one round; past this, the round rescans the folder.
const MAX_PATHS: usize = 10_000;
/// The longest a burst of events may delay a round.
const MAX_WINDOW: Duration = Duration::from_millis(250);

/// Starts watching the folder. The watcher stops when the returned value is dropped.
pub(crate) fn start(shared: Arc<Shared>, stop: CancellationToken) -> notify::Result<RecommendedWatcher> {
    let (tx, rx) = mpsc::channel::<Vec<PathBuf>>(EVENT_QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let lost = overflow.clone();
    let state_dir = shared.folder.state_dir().to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            if ignored(&event.kind) {
                return;
            }
            if event.need_rescan() {
                lost.store(true, Ordering::SeqCst);
            }
            let paths: Vec<PathBuf> = event.paths.into_iter().filter(|p| !p.starts_with(&state_dir)).collect();
            if !paths.is_empty() && tx.try_send(paths).is_err() {
                lost.store(true, Ordering::SeqCst);
            }
        }
        Err(e) => {
            tracing::warn!("folder watcher: {e}");
            lost.store(true, Ordering::SeqCst);
        }
    })?;
    watcher.watch(shared.folder.root(), RecursiveMode::Recursive)?;
    tokio::spawn(debounce(shared, rx, overflow, stop));
    Ok(watcher)
}

/// Reads (and closes after reading) change nothing.
fn ignored(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read | AccessMode::Execute)
        )
    )
}

async fn debounce(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Vec<PathBuf>>,
    overflow: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let quiet = shared.options.debounce;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        let mut paths: BTreeSet<PathBuf> = first.into_iter().collect();
        let started = Instant::now();
        while started.elapsed() < MAX_WINDOW.max(quiet) {
            match tokio::time::timeout(quiet, rx.recv()).await {
                Ok(Some(more)) => paths.extend(more),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let rescan = overflow.swap(false, Ordering::SeqCst) || paths.len() > MAX_PATHS;
        let worker = shared.clone();
        let looked = tokio::task::spawn_blocking(move || {
            if rescan {
                worker.rescan(true);
            } else {
                for path in &paths {
                    worker.refresh_path(path);
                }
            }
        })
        .await;
        if let Err(e) = looked {
            tracing::error!("folder refresh failed: {e}");
        }
        shared.wake();
    }
}
