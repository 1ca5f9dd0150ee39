//! The store is synchronous std code; handlers run it on tokio's blocking
//! pool so a slow disk never stalls the threads driving sockets.

use crate::error::HttpError;

/// Runs `f` on the blocking pool. A panic there becomes a 500, not a crash.
pub async fn run_blocking<T, F>(f: F) -> Result<T, HttpError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| HttpError::Internal(format!("blocking task failed: {e}")))
}
