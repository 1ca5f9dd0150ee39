//! How a streamed handover cuts the sessions of streamed services into
//! batches. A session's gap runs from its own pause to its first run in
//! the new process, so it includes waiting for the rest of its batch to
//! park and for the whole batch to be encoded, sent, checked and resumed:
//! batches are small. Sessions with bytes in flight go first, since their
//! clients feel a pause, and in smaller batches of their own, since a PUT
//! parks only once its disk write has landed and every session of the
//! batch waits for the slowest. Then the idle ones, oldest first.

use std::collections::BTreeSet;

use super::channel::MAX_FDS_PER_MESSAGE;

/// Sessions per batch.
pub const BATCH_SESSIONS: usize = 32;
/// Transferring sessions per batch.
pub const BATCH_TRANSFERRING: usize = 8;
/// Batches in one handover, the listeners' and the final one included: a
/// handover that would need more (sessions appearing as fast as they are
/// moved) rolls back rather than chase them.
pub const MAX_BATCHES: u32 = 100_000;

const _: () = assert!(BATCH_SESSIONS <= MAX_FDS_PER_MESSAGE, "a batch's descriptors fit one message");
const _: () = assert!(BATCH_TRANSFERRING <= BATCH_SESSIONS);

/// The next batch among `running` sessions not yet `asked` to pause: up to
/// `transferring_max` of those in `transferring` while any is left, then up
/// to `max` of the others; each by id (oldest first).
pub fn next_batch(
    running: &[u64],
    transferring: &BTreeSet<u64>,
    asked: &BTreeSet<u64>,
    transferring_max: usize,
    max: usize,
) -> Vec<u64> {
    let mut open: Vec<u64> = running.iter().copied().filter(|id| !asked.contains(id)).collect();
    open.sort_unstable();
    let busy: Vec<u64> = open.iter().copied().filter(|id| transferring.contains(id)).collect();
    if busy.is_empty() {
        open.truncate(max);
        open
    } else {
        busy.into_iter().take(transferring_max).collect()
    }
}

/// A test hook: the batch a new process is told to refuse, if any.
pub fn refused_batch(var: Option<std::ffi::OsString>) -> Option<u32> {
    var?.to_str()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transferring_sessions_go_first_then_by_age() {
        let running = [9, 3, 7, 1, 5];
        let transferring = BTreeSet::from([7, 5]);
        let mut asked = BTreeSet::new();
        let first = next_batch(&running, &transferring, &asked, 1, 3);
        assert_eq!(first, vec![5]);
        asked.extend(&first);
        assert_eq!(next_batch(&running, &transferring, &asked, 1, 3), vec![7]);
        asked.insert(7);
        assert_eq!(next_batch(&running, &transferring, &asked, 1, 3), vec![1, 3, 9]);
        asked.extend([1, 3, 9]);
        assert!(next_batch(&running, &transferring, &asked, 1, 3).is_empty());
    }

    #[test]
    fn every_session_lands_in_exactly_one_batch() {
        let running: Vec<u64> = (1..=1000).collect();
        let transferring: BTreeSet<u64> = (1..=1000).filter(|id| id % 50 == 0).collect();
        let mut asked = BTreeSet::new();
        let mut batches = Vec::new();
        loop {
            let batch = next_batch(&running, &transferring, &asked, BATCH_TRANSFERRING, BATCH_SESSIONS);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= BATCH_SESSIONS);
            for id in &batch {
                assert!(asked.insert(*id), "{id} in two batches");
            }
            batches.push(batch);
        }
        assert_eq!(asked.len(), 1000);
        let transfer_batches = 20usize.div_ceil(BATCH_TRANSFERRING);
        assert_eq!(batches.len(), transfer_batches + 980usize.div_ceil(BATCH_SESSIONS));
        // The 20 transferring sessions come first, in batches of their own.
        let first: BTreeSet<u64> = batches[..transfer_batches].iter().flatten().copied().collect();
        assert_eq!(first, transferring);
    }

    #[test]
    fn the_refusal_hook_reads_a_batch_number() {
        assert_eq!(refused_batch(Some("2".into())), Some(2));
        assert_eq!(refused_batch(Some("x".into())), None);
        assert_eq!(refused_batch(None), None);
    }
}
