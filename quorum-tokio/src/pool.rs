//! A small pool of I/O threads for the short blocking operations of file
//! children (buffered writes), cheaper to hand work to than tokio's
//! blocking pool.
//!
//! Waking a sleeping thread costs tens of microseconds on a small virtual
//! machine, more than a page-cache write. So one idle helper spins for a
//! short while ([`SPIN`]) before it sleeps: under a steady load the next
//! operation finds it awake and the hand-off is a queue push. The spinning
//! helper runs quick operations back to back; when operations are slow (a
//! running average above [`SLOW`]) every operation gets a helper of its own,
//! so slow operations run in parallel; and a task whose quick operation is
//! still queued after [`WATCH`] wakes another helper for it, so one that
//! unexpectedly stalls (a throttled write) holds up nothing queued behind it
//! for long. Helpers start on demand, up to [`MAX_THREADS`], and stop after
//! [`IDLE`] without work.
//!
//! The caller's future completes through a `futures` oneshot channel, so the
//! pool needs no particular runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures_channel::oneshot;

/// How long an idle helper spins for work before it sleeps.
pub(crate) const SPIN: Duration = Duration::from_micros(50);
/// Operations slower than this on average fan out to several helpers.
pub(crate) const SLOW: Duration = Duration::from_micros(20);
/// Helpers at most.
pub(crate) const MAX_THREADS: usize = 64;
/// A helper without work for this long stops.
pub(crate) const IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    sleeping: usize,
    /// Wake-ups sent and not yet taken by a sleeper.
    wakeups: usize,
}

struct Pool {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Jobs queued (a hint for the spinner, read without the lock).
    queued: AtomicUsize,
    /// Helpers spinning for work (at most one).
    spinning: AtomicUsize,
    /// Helpers running a job.
    busy: AtomicUsize,
    /// Running average of a job's duration, in nanoseconds.
    avg_ns: AtomicU64,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Jobs run outside the lock; a poisoned lock still holds a consistent queue.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        queue: Mutex::new(Queue {
            jobs: VecDeque::new(),
            threads: 0,
            sleeping: 0,
            wakeups: 0,
        }),
        wake: Condvar::new(),
        queued: AtomicUsize::new(0),
        spinning: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        avg_ns: AtomicU64::new(0),
    })
}

impl Pool {
    fn slow(&self) -> bool {
        self.avg_ns.load(Ordering::Relaxed) > SLOW.as_nanos() as u64
    }

    fn submit(&'static self, job: Job) -> Result<(), Job> {
        let mut q = lock(&self.queue);
        q.jobs.push_back(job);
        // SeqCst with the spinner's store then load: either it sees this job
        // or this sees that nobody spins (and wakes someone).
        self.queued.fetch_add(1, Ordering::SeqCst);
        // Quick jobs: a helper spinning or running one gets to this one within
        // microseconds, sooner than a woken one would. Slow jobs: one helper
        // each.
        let covered =
            self.spinning.load(Ordering::SeqCst) != 0 || self.busy.load(Ordering::SeqCst) != 0;
        if !covered || self.slow() {
            self.wake_or_start(&mut q);
        }
        if q.threads == 0 {
            // No thread could be started: give the job back.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(q.jobs.pop_back().unwrap_or_else(|| Box::new(|| ())));
        }
        Ok(())
    }

    /// Wakes a sleeping helper nobody has woken yet, or starts one.
    fn wake_or_start(&'static self, q: &mut Queue) {
        if q.sleeping > q.wakeups {
            q.wakeups += 1;
            self.wake.notify_one();
        } else if q.threads < MAX_THREADS {
            let spawned = std::thread::Builder::new()
                .name("quorum-tokio-io".into())
                .spawn(move || self.helper());
            if spawned.is_ok() {
                q.threads += 1;
            }
        }
    }

    /// Wakes or starts a helper if jobs are waiting.
    fn nudge(&'static self) {
        if self.queued.load(Ordering::SeqCst) > 0 {
            let mut q = lock(&self.queue);
            if !q.jobs.is_empty() {
                self.wake_or_start(&mut q);
            }
        }
    }

    /// Takes a queued job; the caller is busy until [`Pool::run`] ends.
    fn pop(&self) -> Option<Job> {
        // SeqCst with `submit`: after a job's `busy` decrement, either this
        // sees a job queued meanwhile or its submitter saw nobody busy.
        if self.queued.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut q = lock(&self.queue);
        let job = q.jobs.pop_front()?;
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.queued.fetch_sub(1, Ordering::SeqCst);
        Some(job)
    }

    fn run(&self, job: Job) {
        let t = Instant::now();
        // A panicking job drops its sender: the caller sees the failure.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let ns = t.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.avg_ns.load(Ordering::Relaxed);
        // About the last eight jobs; a race between two updates loses one.
        self.avg_ns.store(avg - avg / 8 + ns / 8, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    fn helper(&'static self) {
        loop {
            if let Some(job) = self.pop() {
                if self.slow() && self.queued.load(Ordering::Acquire) > 0 {
                    // Slow jobs: the next one should not wait for this one.
                    self.wake_or_start(&mut lock(&self.queue));
                }
                self.run(job);
                continue;
            }
            // Spin for a while (one helper at a time) before sleeping.
            if self
                .spinning
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let start = Instant::now();
                while self.queued.load(Ordering::Acquire) == 0 && start.elapsed() < SPIN {
                    std::hint::spin_loop();
                }
                self.spinning.store(0, Ordering::SeqCst);
                if self.queued.load(Ordering::SeqCst) > 0 {
                    continue;
                }
            }
            let mut q = lock(&self.queue);
            if !q.jobs.is_empty() {
                continue;
            }
            q.sleeping += 1;
            let (mut g, timeout) = self
                .wake
                .wait_timeout(q, IDLE)
                .unwrap_or_else(|p| p.into_inner());
            g.sleeping -= 1;
            if g.wakeups > 0 {
                g.wakeups -= 1;
            } else if timeout.timed_out() && g.jobs.is_empty() {
                g.threads -= 1;
                return;
            }
        }
    }
}

/// Runs `f` on the pool; the future resolves to its result, or `None` if it
/// panicked. Without a thread to run it on, `f` runs here, at once.
pub(crate) fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let p = pool();
    if let Err(job) = p.submit(job) {
        job();
    }
    // Quick jobs: keep the task runnable while it waits (see `wait`).
    wait(rx, (!p.slow()).then(|| Instant::now() + WATCH))
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
                    // Not done yet: maybe the job still waits in the queue
                    // behind a helper that turned out slow. Make sure a
                    // helper comes for it before sleeping.
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
