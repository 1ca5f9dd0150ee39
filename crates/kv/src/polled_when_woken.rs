//! [`PolledWhenWoken`]: a future that a `select!` loop polls only after it
//! woke the task.
//!
//! `tokio::select!` polls every branch each time the task runs. A kv
//! session waits on its socket and on the upgrade's pause signal, and the
//! socket wakes it once per request while the pause almost never comes;
//! yet polling the pause's wait (two watch channels, each a `Notified`
//! under tokio's cooperative budget) cost about 350 instructions per
//! request, as much as parsing the request. Once such a future has
//! registered its waker, polling it again before that waker fires can only
//! return `Pending`: this wrapper gives the inner future a waker of its own
//! that raises a flag before waking the task, and skips the poll while the
//! flag is down and the task is the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// `F`, polled only when it woke the task (or the task changed).
pub(crate) struct PolledWhenWoken<F> {
    inner: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
    /// The waker handed to `inner`: raises `flag`, then wakes the task.
    waker: Waker,
    /// The task's waker at the last poll of `inner`.
    task: Option<Waker>,
}

/// What `inner`'s waker does.
struct WakeFlag {
    woken: AtomicBool,
    /// The task to wake: read on every wake, written when the task changes.
    task: Mutex<Option<Waker>>,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> PolledWhenWoken<F> {
    pub(crate) fn new(inner: F) -> PolledWhenWoken<F> {
        let flag = Arc::new(WakeFlag { woken: AtomicBool::new(false), task: Mutex::new(None) });
        let waker = Waker::from(flag.clone());
        PolledWhenWoken { inner: Box::pin(inner), flag, waker, task: None }
    }
}

impl<F: Future> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if same_task {
            if !this.flag.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
        } else {
            // First poll, or a new task: from now on wake this one.
            *this.flag.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
            // A wake that comes while `inner` is polled below raises the flag again: polled next time.
            this.flag.woken.store(false, Ordering::Release);
        }
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, and registers its waker
    /// in `waker` for the test to fire.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Registered,
    }

    impl Future for Probe {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    /// The waker a [`Probe`] registered last.
    type Registered = Arc<Mutex<Option<Waker>>>;

    fn probe() -> (Probe, Arc<AtomicUsize>, Arc<AtomicBool>, Registered) {
        let (polls, ready, waker) = (Arc::default(), Arc::default(), Arc::default());
        (Probe { polls: Arc::clone(&polls), ready: Arc::clone(&ready), waker: Arc::clone(&waker) }, polls, ready, waker)
    }

    #[test]
    fn polled_once_then_only_after_its_wake() {
        let (inner, polls, ready, inner_waker) = probe();
        let mut gated = PolledWhenWoken::new(inner);
        let task_woken = Arc::new(Counter::default());
        let task = Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task);
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "re-polled without a wake");
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task_woken.0.load(Ordering::SeqCst), 1, "the inner wake must wake the task");
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_task_polls_it_again() {
        let (inner, polls, _ready, _waker) = probe();
        let mut gated = PolledWhenWoken::new(inner);
        let (a, b) = (Waker::from(Arc::new(Counter::default())), Waker::from(Arc::new(Counter::default())));
        assert!(Pin::new(&mut gated).poll(&mut Context::from_waker(&a)).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut Context::from_waker(&b)).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    /// The real use: a `select!` on a busy branch and a gated one, with the
    /// gated future completed from another thread.
    #[test]
    fn a_select_loop_sees_a_wake_from_another_thread() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let mut gated = PolledWhenWoken::new(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        let (go, went) = std::sync::mpsc::channel::<()>();
        let setter = std::thread::spawn(move || {
            went.recv().unwrap();
            tx.send(true).unwrap();
            tx
        });
        let turns = rt.block_on(async {
            let mut turns = 0u64;
            loop {
                tokio::select! {
                    biased;
                    _ = tokio::task::yield_now() => turns += 1,
                    _ = &mut gated => return turns,
                }
                if turns == 10 {
                    // The gated future has been polled (and skipped) by now.
                    go.send(()).unwrap();
                }
                assert!(turns < 100_000_000, "the wake was lost");
            }
        });
        assert!(turns > 0);
        drop(setter.join().unwrap());
    }

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
