//! The I/O threads of [`crate::TokioFileChild`]'s buffered writes: the
//! kit's spin-then-sleep pool ([`quorum_driver::Pool`]), cheaper to hand work
//! to than tokio's blocking pool.
//!
//! Waking a sleeping thread costs tens of microseconds on a small virtual
//! machine, more than a page-cache write. So one idle helper spins for a
//! short while before it sleeps: under a steady load the next write finds it
//! awake and the hand-off is a queue push. When writes are slow (a running
//! average above [`SLOW`]) each goes to a helper of its own, so slow writes
//! run in parallel. A task whose quick write is still waiting after
//! [`WATCH`] nudges the pool, so one helper that unexpectedly stalls (a
//! throttled write) holds up nothing behind it for long.
//!
//! The caller's future completes through a `futures` oneshot channel, so the
//! pool needs no particular runtime.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use quorum_driver::{Pool, PoolConfig, Work};

/// Writes slower than this on average fan out to a helper each (the async
/// driver's threshold: its callers are tasks, which can wait without
/// holding a thread, so fanning out pays sooner than in the blocking driver).
pub(crate) const SLOW: Duration = Duration::from_micros(20);

/// One closure to run on the pool; it sends its own result.
struct Task(Option<Box<dyn FnOnce() + Send>>);

impl Work for Task {
    type Output = ();

    fn run(&mut self) {
        if let Some(f) = self.0.take() {
            // A panicking job drops its sender: the caller sees the failure.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
    }
}

fn pool() -> &'static Pool<Task> {
    static POOL: OnceLock<Pool<Task>> = OnceLock::new();
    POOL.get_or_init(|| {
        Pool::new(PoolConfig {
            spin: Duration::from_micros(50),
            slow: SLOW,
            max_threads: 64,
            name: "quorum-tokio-io",
        })
    })
}

/// Runs `f` on the pool; the future resolves to its result, or `None` if it
/// panicked.
pub(crate) fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> {
    let (tx, rx) = oneshot::channel();
    let task = Task(Some(Box::new(move || {
        let _ = tx.send(f());
    })));
    let p = pool();
    p.spawn(vec![task], Box::new(|(), _| ()));
    // Quick jobs: keep the task runnable while it waits (see `wait`).
    wait(rx, (!p.is_slow()).then(|| Instant::now() + WATCH))
}

/// How long a task waiting for a quick job stays runnable instead of
/// sleeping until the helper wakes it.
pub(crate) const WATCH: Duration = Duration::from_micros(50);

/// A job's result. Until `watch` the waiting task does not go to sleep: it
/// yields to the runtime (`tokio::task::yield_now`, which re-queues it after
/// every other runnable task and lets the worker poll its drivers), so
/// nothing is blocked and the worker thread does not park — which it would
/// then have to be woken from, at a cost of tens of microseconds on a small
/// virtual machine, several times the job itself. After that it waits for
/// the helper's wake-up like any future.
async fn wait<T>(mut rx: oneshot::Receiver<T>, watch: Option<Instant>) -> Option<T> {
    if let Some(until) = watch {
        loop {
            match rx.try_recv() {
                Ok(Some(v)) => return Some(v),
                Ok(None) if Instant::now() < until => ::tokio::task::yield_now().await,
                Ok(None) => {
                    // Not done yet: maybe the job still waits behind a
                    // helper that turned out slow. Make sure a helper comes
                    // for it before sleeping.
                    pool().nudge();
                    break;
                }
                Err(_) => return None, // the job panicked
            }
        }
    }
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn results_come_back_and_a_panic_is_none() {
        smol::block_on(async {
            assert_eq!(super::run(|| 7).await, Some(7));
            let r: Option<u8> = super::run(|| panic!("a job that panics")).await;
            assert_eq!(r, None);
            // The pool still works after a panic.
            assert_eq!(super::run(|| 8).await, Some(8));
        });
    }

    #[test]
    fn many_jobs_from_many_threads_all_run() {
        let count = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    smol::block_on(async {
                        for i in 0..500usize {
                            let c = count.clone();
                            let r = super::run(move || {
                                c.fetch_add(1, Ordering::Relaxed);
                                i
                            });
                            assert_eq!(r.await, Some(i));
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 2000);
    }

    #[test]
    fn a_stalled_job_holds_up_no_quick_one() {
        smol::block_on(async {
            // Quick jobs: the pool hands the next one to a busy helper…
            for _ in 0..16 {
                super::run(|| ()).await;
            }
            let stalled = super::run(|| std::thread::sleep(Duration::from_millis(500)));
            let start = Instant::now();
            // …but not for long when that helper is stuck.
            super::run(|| ()).await;
            assert!(
                start.elapsed() < Duration::from_millis(250),
                "{:?}",
                start.elapsed()
            );
            stalled.await;
        });
    }

    #[test]
    fn slow_jobs_run_in_parallel() {
        smol::block_on(async {
            // Teach the pool that jobs are slow, then time four at once.
            for _ in 0..16 {
                super::run(|| std::thread::sleep(Duration::from_millis(2))).await;
            }
            let start = Instant::now();
            let jobs: Vec<_> = (0..4)
                .map(|_| super::run(|| std::thread::sleep(Duration::from_millis(100))))
                .collect();
            futures_util::future::join_all(jobs).await;
            // Serially they would take 400 ms.
            assert!(
                start.elapsed() < Duration::from_millis(300),
                "{:?}",
                start.elapsed()
            );
        });
    }
}
