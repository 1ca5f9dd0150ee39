//! Names whose file passed the store's symlink check a moment ago, so that
//! a request for a file served again and again skips the blocking pool.
//!
//! [`ferry_files::FileStore::stat`] resolves the name (`realpath`, one call
//! per component) and is blocking, so it runs on tokio's blocking pool: two
//! thread hand-offs per request, which were the largest cost of answering
//! from the cache. A name that passed that check within [`TRUST_FOR`] is
//! remembered with the version it had (its [`FileHead`]: etag and header
//! values). A request for it stats the file on the async thread instead
//! ([`ferry_files::FileStore::stat_known`], one `stat` of a path whose
//! metadata the kernel has cached, shared by the requests that arrived
//! before it: [`crate::fresh_stat`]) and goes on only if the file is still
//! that version. Every request is answered from a look at the file taken
//! after it arrived, so a changed file is never answered from what is
//! remembered here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferry_files::SafeName;

use crate::file_head::FileHead;

/// How long a symlink check is trusted for the file version it saw. It
/// bounds the one case the version cannot show: the very file moved out of
/// the root and linked back in from outside.
pub const TRUST_FOR: Duration = Duration::from_secs(1);

/// Names remembered at once; past it, a new one displaces an arbitrary one
/// (which then takes the checked path once more).
pub const MAX_NAMES: usize = 8192;

#[derive(Debug, Default)]
pub struct ResolvedNames {
    names: Mutex<HashMap<String, Checked>>,
}

#[derive(Debug)]
struct Checked {
    version: Arc<FileHead>,
    at: Instant,
}

impl ResolvedNames {
    /// The version `name` had when it passed the check, if that was less
    /// than [`TRUST_FOR`] before `now`.
    pub fn recent(&self, name: &SafeName, now: Instant) -> Option<Arc<FileHead>> {
        let names = self.lock();
        let checked = names.get(name.as_str())?;
        (now.saturating_duration_since(checked.at) < TRUST_FOR).then(|| checked.version.clone())
    }

    /// `name` passed the check at `now` as `version`.
    pub fn record(&self, name: &SafeName, version: &Arc<FileHead>, now: Instant) {
        let mut names = self.lock();
        if let Some(checked) = names.get_mut(name.as_str()) {
            checked.version = version.clone();
            checked.at = now;
            return;
        }
        if names.len() >= MAX_NAMES
            && let Some(victim) = names.keys().next().cloned()
        {
            names.remove(&victim);
        }
        names.insert(name.as_str().to_owned(), Checked { version: version.clone(), at: now });
        assert!(names.len() <= MAX_NAMES, "{} names remembered, over {MAX_NAMES}", names.len());
    }

    /// Names remembered now, fresh or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Nothing in the map can be left half-updated by a panic.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Checked>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_files::{DEFAULT_MAX_NAME_BYTES, Etag, FileMeta};

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    fn version(etag: &str) -> Arc<FileHead> {
        let meta = FileMeta { size: 1, etag: Etag::parse(etag).unwrap(), modified_unix_ms: 0 };
        Arc::new(FileHead::new(&n("f"), &meta))
    }

    fn etag_of(v: Option<Arc<FileHead>>) -> Option<String> {
        v.map(|v| v.etag.to_string())
    }

    #[test]
    fn trusted_for_a_while_then_forgotten() {
        let names = ResolvedNames::default();
        let t0 = Instant::now();
        let (v1, v2) = (version("3-1-1"), version("4-2-1"));
        assert!(names.recent(&n("a"), t0).is_none());
        names.record(&n("a"), &v1, t0);
        assert_eq!(etag_of(names.recent(&n("a"), t0 + TRUST_FOR / 2)).as_deref(), Some("3-1-1"));
        assert!(names.recent(&n("a"), t0 + TRUST_FOR).is_none(), "expired");
        assert!(names.recent(&n("b"), t0).is_none());
        // A new check replaces the version and restarts the clock.
        names.record(&n("a"), &v2, t0 + TRUST_FOR);
        assert_eq!(etag_of(names.recent(&n("a"), t0 + TRUST_FOR + TRUST_FOR / 2)).as_deref(), Some("4-2-1"));
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn bounded() {
        let names = ResolvedNames::default();
        let now = Instant::now();
        let v = version("1-1-1");
        for i in 0..MAX_NAMES + 100 {
            names.record(&n(&format!("f{i}")), &v, now);
        }
        assert_eq!(names.len(), MAX_NAMES);
        // The newest is always kept.
        assert!(names.recent(&n(&format!("f{}", MAX_NAMES + 99)), now).is_some());
    }
}
