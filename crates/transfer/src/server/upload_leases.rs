//! Which partial uploads a live session is writing. Two connections
//! writing one upload id (the same `ferry put` run twice at once) would
//! interleave truncation and writes; the second is told `busy` instead and
//! its client retries once the first is done.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ferry_files::UploadId;

#[derive(Default)]
pub struct UploadLeases {
    held: Mutex<HashSet<UploadId>>,
}

/// Holds an upload id until dropped.
pub struct UploadLease {
    leases: Arc<UploadLeases>,
    id: UploadId,
}

impl UploadLeases {
    /// Takes the id, or `None` if another session holds it.
    pub fn take(self: &Arc<Self>, id: &UploadId) -> Option<UploadLease> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(id.clone()).then(|| UploadLease { leases: self.clone(), id: id.clone() })
    }
}

impl Drop for UploadLease {
    fn drop(&mut self) {
        self.leases.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let leases = Arc::new(UploadLeases::default());
        let id = UploadId::from_bytes([7; 16]);
        let first = leases.take(&id).unwrap();
        assert!(leases.take(&id).is_none());
        drop(first);
        assert!(leases.take(&id).is_some());
    }
}
