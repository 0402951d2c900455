//! Running the requests: the schedule the depth threads (or tasks) share —
//! offsets handed out in issue order, wrapped as QEMU wraps them, a drain and
//! a flush every `--flush-interval` requests — and the threads and tasks that
//! follow it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use quorum_tokio::AsyncDevice;

/// The next request's offset: QEMU's `bench_cb` with the fix of QEMU 10.1
/// (commit ff2ab634), which wraps within `[0, size - bufsize)` so that no
/// request reaches past the end. (QEMU 10.0 wraps modulo the size and fails
/// a request that crosses the end with EIO.)
pub(crate) fn next_offset(cur: u64, step: u64, size: u64, bufsize: u64) -> u64 {
    let n = cur.saturating_add(step);
    if size <= bufsize {
        0
    } else {
        n % (size - bufsize)
    }
}

/// Who issues what: shared by the depth threads (or tasks).
pub(super) struct Sched {
    /// Requests not yet issued.
    pub(super) unissued: u64,
    pub(super) in_flight: u64,
    /// The next request's offset.
    pub(super) offset: u64,
    /// A flush is due: issue nothing until it is done (drain, then flush).
    pub(super) hold: bool,
    /// A flush is due after the last request (done after the clock stops,
    /// as qemu-img's main loop stops counting when the last request is done).
    pub(super) final_flush: bool,
}

/// What a depth thread does next.
pub(super) enum Take {
    /// Issue a request at this offset.
    Issue(u64),
    /// A flush is due: wait until it is done.
    Hold,
    /// Nothing left to issue.
    Done,
}

impl Sched {
    fn new(count: u64, offset: u64) -> Sched {
        Sched {
            unissued: count,
            in_flight: 0,
            offset,
            hold: false,
            final_flush: false,
        }
    }

    fn take(&mut self, j: &Job) -> Take {
        if self.unissued == 0 {
            return Take::Done;
        }
        if self.hold {
            return Take::Hold;
        }
        self.unissued -= 1;
        self.in_flight += 1;
        let offset = self.offset;
        self.offset = next_offset(self.offset, j.step, j.size, j.bufsize);
        Take::Issue(offset)
    }

    /// A request ended (`ok` or not). A failure stops everyone, as qemu-img
    /// exits at the first one. Every `fi` requests a flush is due: issuing
    /// holds, and the last request in flight to end does the flush (true).
    fn done(&mut self, ok: bool, fi: u64) -> bool {
        self.in_flight -= 1;
        if !ok {
            self.unissued = 0;
            return false;
        }
        if fi != 0 && self.unissued.is_multiple_of(fi) {
            if self.unissued == 0 {
                self.final_flush = true;
            } else {
                self.hold = true;
                return self.in_flight == 0;
            }
        }
        false
    }
}

/// The workload, as every depth thread or task sees it.
#[derive(Clone, Copy)]
pub(super) struct Job {
    /// Device size.
    pub(super) size: u64,
    pub(super) bufsize: u64,
    pub(super) step: u64,
    /// Flush interval (0: none).
    pub(super) fi: u64,
    pub(super) write: bool,
    pub(super) pattern: u8,
    /// Record each request's latency.
    pub(super) stats: bool,
}

/// One thread per depth slot; `make` gives each its request and flush
/// functions. Returns each thread's latencies (or its failure) and whether
/// a final flush is due.
pub(super) fn run_threads<F, R, L>(
    threads: usize,
    count: u64,
    offset: u64,
    job: Job,
    mut make: F,
) -> (Vec<Result<Vec<u64>, String>>, bool)
where
    F: FnMut(Job) -> (R, L),
    R: FnMut(u64) -> Result<(), String> + Send + 'static,
    L: Fn() -> Result<(), String> + Send + 'static,
{
    let sched = Arc::new((Mutex::new(Sched::new(count, offset)), Condvar::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let sched = sched.clone();
            let (io, flush) = make(job);
            std::thread::spawn(move || worker(&sched, job, io, flush))
        })
        .collect();
    let results = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a worker thread panicked".to_string()))
        })
        .collect();
    let final_flush = sched.0.lock().map(|s| s.final_flush).unwrap_or(false);
    (results, final_flush)
}

/// One of the depth threads: issue, wait, repeat; drain and flush every
/// `fi` requests as qemu-img's `bench_cb` does. Returns the latency of each
/// request in nanoseconds (with `--stats`).
pub(super) fn worker(
    sched: &(Mutex<Sched>, Condvar),
    j: Job,
    mut io: impl FnMut(u64) -> Result<(), String>,
    flush: impl Fn() -> Result<(), String>,
) -> Result<Vec<u64>, String> {
    let (lock, cv) = sched;
    let relock = || lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = Vec::new();
    let mut s = relock();
    loop {
        let offset = match s.take(&j) {
            Take::Done => return Ok(lat),
            Take::Hold => {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            Take::Issue(offset) => offset,
        };
        drop(s);
        let t = j.stats.then(Instant::now);
        let r = io(offset);
        if let Some(t) = t {
            lat.push(t.elapsed().as_nanos() as u64);
        }
        s = relock();
        let must_flush = s.done(r.is_ok(), j.fi);
        if let Err(e) = r {
            cv.notify_all();
            return Err(e);
        }
        if must_flush {
            drop(s);
            let r = flush();
            s = relock();
            s.hold = false;
            cv.notify_all();
            if let Err(e) = r {
                s.unissued = 0;
                return Err(e);
            }
        }
    }
}

/// `--driver tokio`: one task per depth slot on the runtime, the same
/// schedule as the threads'.
pub(super) fn run_tasks(
    rt: &tokio::runtime::Runtime,
    dev: &Arc<AsyncDevice>,
    tasks: usize,
    count: u64,
    offset: u64,
    job: Job,
) -> (Vec<Result<Vec<u64>, String>>, bool) {
    let sched = Arc::new((
        Mutex::new(Sched::new(count, offset)),
        tokio::sync::Notify::new(),
    ));
    let data: Arc<[u8]> = vec![job.pattern; job.bufsize as usize].into();
    let handles: Vec<_> = (0..tasks)
        .map(|_| rt.spawn(task(dev.clone(), sched.clone(), job, data.clone())))
        .collect();
    let results = rt.block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(
                h.await
                    .unwrap_or_else(|_| Err("a worker task panicked".to_string())),
            );
        }
        out
    });
    let final_flush = sched.0.lock().map(|s| s.final_flush).unwrap_or(false);
    (results, final_flush)
}

/// One of the depth tasks: [`worker`]'s loop, awaiting instead of blocking.
pub(super) async fn task(
    dev: Arc<AsyncDevice>,
    sched: Arc<(Mutex<Sched>, tokio::sync::Notify)>,
    j: Job,
    data: Arc<[u8]>,
) -> Result<Vec<u64>, String> {
    let (lock, notify) = &*sched;
    let relock = || lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = Vec::new();
    loop {
        let next = {
            let mut s = relock();
            match s.take(&j) {
                Take::Done => return Ok(lat),
                // Registered under the lock: the flusher's notify_waiters
                // (also under the lock) cannot be missed.
                Take::Hold => Err(notify.notified()),
                Take::Issue(offset) => Ok(offset),
            }
        };
        let offset = match next {
            Ok(offset) => offset,
            Err(wait) => {
                wait.await;
                continue;
            }
        };
        let t = j.stats.then(Instant::now);
        let r = if j.write {
            dev.write(offset, data.clone())
                .await
                .map_err(|e| e.to_string())
        } else {
            dev.read(offset, j.bufsize as usize)
                .await
                .map(drop)
                .map_err(|e| match e {
                    quorum_tokio::ReadError::Io(e) => e.to_string(),
                    other => other.to_string(),
                })
        };
        if let Some(t) = t {
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let must_flush = {
            let mut s = relock();
            let must = s.done(r.is_ok(), j.fi);
            if r.is_err() {
                notify.notify_waiters();
            }
            must
        };
        r?;
        if must_flush {
            let r = dev.flush().await.map_err(|e| e.to_string());
            {
                let mut s = relock();
                s.hold = false;
                if r.is_err() {
                    s.unissued = 0;
                }
                notify.notify_waiters();
            }
            r?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_wrap_inside_the_device() {
        assert_eq!(next_offset(0, 4096, 16384, 4096), 4096);
        assert_eq!(next_offset(8192, 4096, 16384, 4096), 0);
        assert_eq!(next_offset(0, 14336, 16384, 4096), 2048);
        assert_eq!(next_offset(0, 4096, 4096, 4096), 0);
        assert_eq!(next_offset(0, 4096, 0, 4096), 0);
    }
}
