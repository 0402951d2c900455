//! The resync scheduler (SPEC R-SYNC-4..5): a job that walks the map and
//! brings every chunk back in sync through the core's resync requests,
//! while clients read and write — rate-limited, pausable, cancellable,
//! with progress as QEMU's block jobs report it (`len`: bytes to copy,
//! `offset`: bytes done).
//!
//! The decisions per chunk are the core's ([`quorum_proto::Request::Resync`]);
//! which chunks need work is the map's. The job only walks, paces and
//! counts. A pass visits every chunk that needs work (unsettled, or stale on
//! a child that can be reached); chunks a client write overlapped are
//! retried in another pass; a chunk without quorum is left marked (the core
//! reported `QUORUM_FAILURE`). A flush every second — and at the end — makes
//! what was copied durable, which is what clears the marks.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quorum_proto::Errno;

/// What a job runs against: the device.
pub trait ResyncTarget {
    /// The next chunk at or after `from` that needs work: its index, byte
    /// offset and length.
    fn next(&self, from: u64) -> Option<(u64, u64, u64)>;
    /// Bytes of the chunks that need work now.
    fn work(&self) -> u64;
    /// Brings `offset..offset + len` back in sync (the core's resync).
    fn resync(&self, offset: u64, len: u64) -> Result<(), Errno>;
    /// Flushes the device.
    fn flush(&self) -> Result<(), Errno>;
}

/// A job's status, as QEMU names them (`JobStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Made, not started.
    Created,
    /// Copying.
    Running,
    /// Paused by the user.
    Paused,
    /// Done copying, about to finish.
    Waiting,
    /// Finishing.
    Pending,
    /// Being cancelled.
    Aborting,
    /// Over.
    Concluded,
    /// Gone.
    Null,
}

impl JobStatus {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "created",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Waiting => "waiting",
            JobStatus::Pending => "pending",
            JobStatus::Aborting => "aborting",
            JobStatus::Concluded => "concluded",
            JobStatus::Null => "null",
        }
    }
}

/// A job's state, shared with whoever controls and shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobState {
    /// Bytes per second, 0 for no limit.
    pub speed: u64,
    /// Paused by the user.
    pub paused: bool,
    /// Cancelled by the user.
    pub cancel: bool,
    /// Bytes done.
    pub offset: u64,
    /// Bytes to do, done included (it grows when new work appears).
    pub len: u64,
    /// Where it is.
    pub status: JobStatus,
    /// Copying right now (not sleeping, not paused).
    pub busy: bool,
    /// Chunks a client write overlapped, retried later.
    pub retried: u64,
    /// Chunks left marked: no quorum among the children not stale there.
    pub failed: u64,
}

/// What a job tells its owner as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// `JOB_STATUS_CHANGE`.
    Status(JobStatus),
    /// `BLOCK_JOB_COMPLETED` (`error`: chunks left without quorum).
    Completed(JobState),
    /// `BLOCK_JOB_CANCELLED`.
    Cancelled(JobState),
}

/// The control of one job: its state behind a lock, and a condition to
/// wake it (resumed, cancelled, speed changed).
#[derive(Debug)]
pub struct Job {
    state: Mutex<JobState>,
    wake: Condvar,
}

impl Job {
    /// A job not started, at `speed` bytes per second (0: no limit).
    pub fn new(speed: u64) -> Job {
        Job {
            state: Mutex::new(JobState {
                speed,
                paused: false,
                cancel: false,
                offset: 0,
                len: 0,
                status: JobStatus::Created,
                busy: false,
                retried: 0,
                failed: 0,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now.
    pub fn state(&self) -> JobState {
        *self.lock()
    }

    /// Sets the speed (`block-job-set-speed`).
    pub fn set_speed(&self, speed: u64) {
        self.lock().speed = speed;
        self.wake.notify_all();
    }

    /// Pauses (`block-job-pause`); false if it was paused already.
    pub fn pause(&self) -> bool {
        let mut s = self.lock();
        let was = s.paused;
        s.paused = true;
        !was
    }

    /// Resumes (`block-job-resume`); false if it was not paused.
    pub fn resume(&self) -> bool {
        let mut s = self.lock();
        let was = s.paused;
        s.paused = false;
        self.wake.notify_all();
        was
    }

    /// Cancels (`block-job-cancel`).
    pub fn cancel(&self) {
        self.lock().cancel = true;
        self.wake.notify_all();
    }

    /// Waits up to `d` unless woken; true if cancelled meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let s = self.lock();
        if s.cancel {
            return true;
        }
        let (s, _) = self
            .wake
            .wait_timeout(s, d)
            .unwrap_or_else(|p| p.into_inner());
        s.cancel
    }

    fn set(&self, f: impl FnOnce(&mut JobState)) -> JobState {
        let mut s = self.lock();
        f(&mut s);
        *s
    }

    /// Runs the job to its end against `target`, telling `events` what
    /// happens; returns its final state. Blocks: run it on a thread.
    pub fn run(&self, target: &dyn ResyncTarget, events: &mut dyn FnMut(JobEvent)) -> JobState {
        let status = |s: JobStatus, events: &mut dyn FnMut(JobEvent)| {
            self.set(|st| st.status = s);
            events(JobEvent::Status(s));
        };
        status(JobStatus::Created, events);
        let work = target.work();
        self.set(|s| s.len = work);
        status(JobStatus::Running, events);
        // The pace: bytes done since `since`, at the speed in force then.
        let mut since = Instant::now();
        let mut paced = 0u64;
        let mut speed = self.state().speed;
        let mut last_flush = Instant::now();
        let mut last_len = Instant::now();
        let mut failed = std::collections::BTreeSet::new();
        // The bytes of the chunks in `failed`: left to do at the end.
        let mut left = 0u64;
        // A chunk done again and again without its mark clearing (a copy
        // that "succeeds" on a child that keeps losing it): given up.
        let mut attempts = std::collections::BTreeMap::<u64, u32>::new();
        loop {
            let (mut cursor, mut progressed, mut retry) = (0u64, false, false);
            while let Some((chunk, off, len)) = target.next(cursor) {
                cursor = chunk + 1;
                if failed.contains(&chunk) {
                    continue;
                }
                let tries = attempts.entry(chunk).or_insert(0);
                *tries += 1;
                if *tries > 8 {
                    failed.insert(chunk);
                    left += len;
                    self.set(|s| s.failed += 1);
                    continue;
                }
                // Paused: wait for resume (or cancel).
                loop {
                    let st = self.state();
                    if st.cancel {
                        return self.cancelled(target, events);
                    }
                    if !st.paused {
                        if st.status == JobStatus::Paused {
                            status(JobStatus::Running, events);
                            since = Instant::now();
                            paced = 0;
                        }
                        break;
                    }
                    if st.status != JobStatus::Paused {
                        self.set(|s| s.busy = false);
                        status(JobStatus::Paused, events);
                    }
                    let _ = self.sleep(Duration::from_millis(200));
                }
                // The rate limit: no faster than `speed` since `since`.
                let st = self.state();
                if st.speed != speed {
                    speed = st.speed;
                    since = Instant::now();
                    paced = 0;
                }
                if speed > 0 {
                    let due = Duration::from_secs_f64(paced as f64 / speed as f64);
                    let el = since.elapsed();
                    if due > el {
                        self.set(|s| s.busy = false);
                        if self.sleep(due - el) {
                            return self.cancelled(target, events);
                        }
                    }
                }
                self.set(|s| s.busy = true);
                match target.resync(off, len) {
                    Ok(()) => {
                        progressed = true;
                        paced += len;
                        self.set(|s| {
                            s.offset += len;
                            s.len = s.len.max(s.offset);
                        });
                    }
                    Err(e) if e == Errno::EAGAIN => {
                        retry = true;
                        self.set(|s| s.retried += 1);
                    }
                    Err(_) => {
                        failed.insert(chunk);
                        left += len;
                        self.set(|s| s.failed += 1);
                    }
                }
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    let _ = target.flush();
                    last_flush = Instant::now();
                }
                if last_len.elapsed() >= Duration::from_secs(1) {
                    let more = target.work();
                    self.set(|s| s.len = s.len.max(s.offset + more));
                    last_len = Instant::now();
                }
            }
            let _ = target.flush();
            last_flush = Instant::now();
            if !retry && target.next(0).is_none_or(|(c, ..)| failed.contains(&c)) {
                break;
            }
            if !progressed && self.sleep(Duration::from_millis(20)) {
                return self.cancelled(target, events);
            }
        }
        // At the end the bytes to do are those done and those left: the
        // estimate while it ran (done + the map's work) also counted
        // chunks copied whose marks had not cleared yet. A job that left
        // nothing ends with offset == len, as QEMU's do.
        self.set(|s| {
            s.busy = false;
            s.len = s.offset + left;
        });
        status(JobStatus::Waiting, events);
        status(JobStatus::Pending, events);
        events(JobEvent::Completed(self.state()));
        status(JobStatus::Concluded, events);
        status(JobStatus::Null, events);
        self.state()
    }

    fn cancelled(&self, target: &dyn ResyncTarget, events: &mut dyn FnMut(JobEvent)) -> JobState {
        // What was copied stays copied: flush so its marks clear.
        let _ = target.flush();
        self.set(|st| {
            st.status = JobStatus::Aborting;
            st.busy = false;
        });
        events(JobEvent::Status(JobStatus::Aborting));
        events(JobEvent::Cancelled(self.state()));
        for s in [JobStatus::Concluded, JobStatus::Null] {
            self.set(|st| st.status = s);
            events(JobEvent::Status(s));
        }
        self.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Ten chunks of 1 KiB; chunk 3 overlaps a client write once, chunk 7
    /// has no quorum.
    struct Fake {
        todo: Mutex<Vec<bool>>,
        busy_once: Mutex<bool>,
        flushes: Mutex<u32>,
    }

    impl ResyncTarget for Fake {
        fn next(&self, from: u64) -> Option<(u64, u64, u64)> {
            let t = self.todo.lock().unwrap();
            (from..10)
                .find(|&i| t[i as usize])
                .map(|i| (i, i * 1024, 1024))
        }
        fn work(&self) -> u64 {
            self.todo.lock().unwrap().iter().filter(|&&b| b).count() as u64 * 1024
        }
        fn resync(&self, offset: u64, _len: u64) -> Result<(), Errno> {
            let i = (offset / 1024) as usize;
            if i == 3 {
                let mut b = self.busy_once.lock().unwrap();
                if !*b {
                    *b = true;
                    return Err(Errno::EAGAIN);
                }
            }
            if i == 7 {
                return Err(Errno::EIO);
            }
            self.todo.lock().unwrap()[i] = false;
            Ok(())
        }
        fn flush(&self) -> Result<(), Errno> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    #[test]
    fn r_sync_5_a_job_walks_retries_and_reports_as_qemu() {
        let f = Fake {
            todo: Mutex::new(vec![true; 10]),
            busy_once: Mutex::new(false),
            flushes: Mutex::new(0),
        };
        let job = Job::new(0);
        let mut seen = Vec::new();
        let end = job.run(&f, &mut |e| seen.push(e));
        assert_eq!(
            end.offset,
            9 * 1024,
            "every chunk but the one without quorum"
        );
        assert_eq!((end.retried, end.failed), (1, 1));
        assert_eq!(end.len, 10 * 1024);
        let statuses: Vec<&str> = seen
            .iter()
            .filter_map(|e| match e {
                JobEvent::Status(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            statuses,
            [
                "created",
                "running",
                "waiting",
                "pending",
                "concluded",
                "null"
            ]
        );
        assert!(seen.iter().any(|e| matches!(e, JobEvent::Completed(_))));
        assert!(*f.flushes.lock().unwrap() >= 1);
    }

    /// Twelve chunks of 1 KiB whose marks clear a flush late (the map
    /// forgets a copied chunk one flush after the one that made it
    /// durable): `work()` still counts copied chunks.
    struct Lagging {
        todo: Mutex<Vec<bool>>,
        copied: Mutex<Vec<u64>>,
        flushed_once: Mutex<Vec<u64>>,
    }

    impl ResyncTarget for Lagging {
        fn next(&self, from: u64) -> Option<(u64, u64, u64)> {
            let t = self.todo.lock().unwrap();
            (from..12)
                .find(|&i| t[i as usize])
                .map(|i| (i, i * 1024, 1024))
        }
        fn work(&self) -> u64 {
            let todo = self.todo.lock().unwrap().iter().filter(|&&b| b).count();
            let copied = self.copied.lock().unwrap().len();
            let once = self.flushed_once.lock().unwrap().len();
            (todo + copied + once) as u64 * 1024
        }
        fn resync(&self, offset: u64, _len: u64) -> Result<(), Errno> {
            let i = offset / 1024;
            self.todo.lock().unwrap()[i as usize] = false;
            self.copied.lock().unwrap().push(i);
            Ok(())
        }
        fn flush(&self) -> Result<(), Errno> {
            let c = std::mem::take(&mut *self.copied.lock().unwrap());
            *self.flushed_once.lock().unwrap() = c;
            Ok(())
        }
    }

    /// Seen in crash_cli's rebuild: a job that did everything reported
    /// `len` above `offset` in BLOCK_JOB_COMPLETED (its estimate counted
    /// copied chunks whose marks had not cleared yet).
    #[test]
    fn r_sync_5_a_job_that_did_all_ends_with_offset_equal_to_len() {
        let f = Lagging {
            todo: Mutex::new(vec![true; 12]),
            copied: Mutex::new(Vec::new()),
            flushed_once: Mutex::new(Vec::new()),
        };
        // 8 KiB/s: 1.4 s, so the estimate is refreshed once on the way.
        let job = Job::new(8192);
        let mut done = None;
        let end = job.run(&f, &mut |e| {
            if let JobEvent::Completed(s) = e {
                done = Some(s);
            }
        });
        assert_eq!((end.offset, end.len), (12 * 1024, 12 * 1024), "{end:?}");
        let done = done.expect("BLOCK_JOB_COMPLETED");
        assert_eq!((done.offset, done.len), (end.offset, end.len));
    }

    #[test]
    fn r_sync_5_rate_limit_pause_and_cancel() {
        let f = Fake {
            todo: Mutex::new(vec![true; 10]),
            busy_once: Mutex::new(true),
            flushes: Mutex::new(0),
        };
        // 4 KiB/s: ten 1 KiB chunks would take over two seconds.
        let job = std::sync::Arc::new(Job::new(4096));
        let j = job.clone();
        let h = std::thread::spawn(move || {
            let mut ev = Vec::new();
            let end = j.run(&f, &mut |e| ev.push(e));
            (end, ev)
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(job.pause());
        assert!(!job.pause(), "already paused");
        std::thread::sleep(Duration::from_millis(300));
        let at = job.state();
        assert!(at.paused && at.offset < 10 * 1024);
        assert!(job.resume());
        job.cancel();
        let (end, ev) = h.join().unwrap();
        assert!(end.offset < 9 * 1024, "cancelled before the end: {end:?}");
        assert!(ev.iter().any(|e| matches!(e, JobEvent::Cancelled(_))));
        assert!(ev.contains(&JobEvent::Status(JobStatus::Paused)));
        assert_eq!(end.status, JobStatus::Null);
    }
}
