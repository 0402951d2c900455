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
//! reported `QUORUM_FAILURE`).
//!
//! A chunk copied is done at once: the child holds it and votes there (the
//! map's fresh mark, [`super::SyncMap::is_stale`]). What makes the copy
//! durable, and clears the mark in the map file, is a flush: one every
//! [`FLUSH_EVERY`] while the job runs, and one right after it ends. So the
//! copy runs at the page cache's speed, as `cp` does, and a crash costs
//! the copies of the last few seconds (the file still calls them stale:
//! they are copied again), never a chunk called in sync that is not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quorum_proto::Errno;

/// What a job runs against: the device. A job calls it from several
/// threads at once ([`Job::workers`]): resyncs of different chunks run
/// side by side (the core orders each against client writes).
pub trait ResyncTarget: Sync {
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
    /// Chunks copied at once.
    workers: usize,
}

/// Chunks a job copies at once by default: two per core (a chunk's copy
/// waits on its reads, then on its write), from 2 to 8.
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(2, 8)
}

impl Job {
    /// A job not started, at `speed` bytes per second (0: no limit),
    /// copying [`default_workers`] chunks at once.
    pub fn new(speed: u64) -> Job {
        Job::with_workers(speed, default_workers())
    }

    /// A job not started, at `speed` bytes per second (0: no limit),
    /// copying `workers` chunks at once (at least one).
    pub fn with_workers(speed: u64, workers: usize) -> Job {
        Job {
            workers: workers.max(1),
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

    /// How many chunks it copies at once.
    pub fn workers(&self) -> usize {
        self.workers
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
    /// happens; returns its final state. Blocks: run it on a thread. The
    /// chunks are copied by [`Job::workers`] threads at once (scoped to
    /// this call), each taking the next chunk of the pass as it is free:
    /// the rate limit, the attempts per chunk, the passes and the progress
    /// are the job's, over all of them.
    pub fn run(
        &self,
        target: &dyn ResyncTarget,
        events: &mut (dyn FnMut(JobEvent) + Send),
    ) -> JobState {
        let events = Mutex::new(events);
        let status = |s: JobStatus| {
            let mut ev = events.lock().unwrap_or_else(|p| p.into_inner());
            self.set(|st| st.status = s);
            ev(JobEvent::Status(s));
        };
        status(JobStatus::Created);
        let work = target.work();
        self.set(|s| s.len = work);
        status(JobStatus::Running);
        let now = Instant::now();
        let walk = Mutex::new(Walk {
            cursor: 0,
            in_flight: 0,
            copying: 0,
            progressed: false,
            retry: false,
            since: now,
            paced: 0,
            speed: self.state().speed,
            pace: 0,
            last_flush: now,
            flushing: false,
            failed: BTreeSet::new(),
            left: 0,
            attempts: BTreeMap::new(),
            end: None,
        });
        let turn = Condvar::new();
        let ctx = Ctx {
            job: self,
            target,
            walk: &walk,
            turn: &turn,
            status: &status,
        };
        let workers = self.workers.max(1);
        std::thread::scope(|sc| {
            for _ in 0..workers {
                sc.spawn(|| ctx.worker());
            }
        });
        let w = walk.into_inner().unwrap_or_else(|p| p.into_inner());
        let events = events.into_inner().unwrap_or_else(|p| p.into_inner());
        if w.end == Some(End::Cancelled) {
            return self.cancelled(target, events);
        }
        // At the end the bytes to do are those done and those left: the
        // estimate while it ran (done + the map's work) also counted
        // chunks copied whose marks had not cleared yet. A job that left
        // nothing ends with offset == len, as QEMU's do.
        self.set(|s| {
            s.busy = false;
            s.len = s.offset + w.left;
        });
        for s in [JobStatus::Waiting, JobStatus::Pending] {
            self.set(|st| st.status = s);
            events(JobEvent::Status(s));
        }
        events(JobEvent::Completed(self.state()));
        for s in [JobStatus::Concluded, JobStatus::Null] {
            self.set(|st| st.status = s);
            events(JobEvent::Status(s));
        }
        // Every chunk is copied: the child votes everywhere. The copies
        // since the last flush become durable now, and the map file says
        // so (a crash before this copies them again).
        let _ = target.flush();
        self.state()
    }

    fn cancelled(
        &self,
        target: &dyn ResyncTarget,
        events: &mut (dyn FnMut(JobEvent) + Send),
    ) -> JobState {
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

/// How a job ended, as its workers saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Done,
    Cancelled,
}

/// A job's walk, shared by its workers: where the pass is, the pace, and
/// what is failed or given up.
#[derive(Debug)]
struct Walk {
    /// The next chunk of the pass to look at.
    cursor: u64,
    /// Chunks taken and not finished (waiting for their pace, or copying).
    in_flight: usize,
    /// Chunks being copied right now.
    copying: usize,
    /// The pass copied something; a chunk of it must be retried.
    progressed: bool,
    retry: bool,
    /// The pace: bytes taken since `since`, at `speed` then (bytes taken
    /// are reserved before they are copied, so that workers together keep
    /// to the limit; a copy that did nothing gives its bytes back).
    since: Instant,
    paced: u64,
    speed: u64,
    /// Which pace (bumped when it starts afresh).
    pace: u64,
    last_flush: Instant,
    /// A worker flushes (copies wait for it).
    flushing: bool,
    failed: BTreeSet<u64>,
    /// The bytes of the chunks in `failed`: left to do at the end.
    left: u64,
    /// A chunk done again and again without its mark clearing (a copy
    /// that "succeeds" on a child that keeps losing it): given up.
    attempts: BTreeMap<u64, u32>,
    end: Option<End>,
}

/// What a worker of [`Job::run`] works with.
struct Ctx<'a> {
    job: &'a Job,
    target: &'a dyn ResyncTarget,
    walk: &'a Mutex<Walk>,
    /// Woken when a chunk is finished or the job ends.
    turn: &'a Condvar,
    /// Sets the job's status and tells the owner.
    status: &'a (dyn Fn(JobStatus) + Sync),
}

/// How often a running job flushes what it copied (the kernel's own
/// writeback wakes as often): the copies a crash can cost, to be copied
/// again. Not more often: a flush waits for the disk, and a rebuild
/// unthrottled would then run at the disk's speed rather than the page
/// cache's, and make clients' writes wait for their flush too.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// A chunk's attempts before it is given up.
const MAX_ATTEMPTS: u32 = 8;

impl Ctx<'_> {
    fn walk(&self) -> MutexGuard<'_, Walk> {
        self.walk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the job for every worker.
    fn end(&self, w: &mut Walk, end: End) {
        w.end.get_or_insert(end);
        self.turn.notify_all();
    }

    /// One worker: takes the next chunk of the pass, waits for its pace
    /// and for the job to be running, copies it, counts it; the last
    /// worker out of a pass flushes and starts the next one.
    fn worker(&self) {
        let job = self.job;
        loop {
            let (chunk, off, len) = {
                let mut w = self.walk();
                let (chunk, off, len) = loop {
                    if w.end.is_some() {
                        return;
                    }
                    if job.state().cancel {
                        self.end(&mut w, End::Cancelled);
                        return;
                    }
                    match self.target.next(w.cursor) {
                        Some((chunk, off, len)) => {
                            w.cursor = chunk + 1;
                            if w.failed.contains(&chunk) {
                                continue;
                            }
                            let tries = w.attempts.entry(chunk).or_insert(0);
                            *tries += 1;
                            if *tries > MAX_ATTEMPTS {
                                w.failed.insert(chunk);
                                w.left += len;
                                job.set(|s| s.failed += 1);
                                continue;
                            }
                            break (chunk, off, len);
                        }
                        // The pass is over once the copies in flight are.
                        None if w.in_flight > 0 => {
                            w = self.turn.wait(w).unwrap_or_else(|p| p.into_inner());
                        }
                        None => {
                            // The last one out: either nothing is left (a
                            // chunk copied needs nothing more, its flush
                            // comes after the job) or another pass starts.
                            let left = self.target.next(0);
                            if !w.retry && left.is_none_or(|(c, ..)| w.failed.contains(&c)) {
                                self.end(&mut w, End::Done);
                                return;
                            }
                            if !w.progressed && job.sleep(Duration::from_millis(20)) {
                                self.end(&mut w, End::Cancelled);
                                return;
                            }
                            (w.cursor, w.progressed, w.retry) = (0, false, false);
                        }
                    }
                };
                w.in_flight += 1;
                (chunk, off, len)
            };
            let Some(pace) = self.wait(len) else {
                let mut w = self.walk();
                w.in_flight -= 1;
                self.end(&mut w, End::Cancelled);
                return;
            };
            let r = self.target.resync(off, len);
            let mut w = self.walk();
            w.in_flight -= 1;
            w.copying -= 1;
            let busy = w.copying > 0;
            match r {
                Ok(()) => {
                    w.progressed = true;
                    job.set(|s| {
                        s.busy = busy;
                        s.offset += len;
                        s.len = s.len.max(s.offset);
                    });
                }
                Err(e) => {
                    // It did nothing: its bytes go back to the pace.
                    if w.pace == pace {
                        w.paced = w.paced.saturating_sub(len);
                    }
                    if e == Errno::EAGAIN {
                        w.retry = true;
                    } else {
                        w.failed.insert(chunk);
                        w.left += len;
                    }
                    job.set(|s| {
                        s.busy = busy;
                        if e == Errno::EAGAIN {
                            s.retried += 1;
                        } else {
                            s.failed += 1;
                        }
                    });
                }
            }
            self.turn.notify_all();
            // A flush every FLUSH_EVERY makes what was copied durable; the
            // estimate of what is left follows it. Copies wait meanwhile, so
            // that no chunk is counted both done and left (one being copied
            // is still work).
            if w.flushing || w.last_flush.elapsed() < FLUSH_EVERY {
                continue;
            }
            w.flushing = true;
            while w.copying > 0 {
                w = self.turn.wait(w).unwrap_or_else(|p| p.into_inner());
            }
            drop(w);
            let _ = self.target.flush();
            let more = self.target.work();
            job.set(|s| s.len = s.len.max(s.offset + more));
            let mut w = self.walk();
            w.last_flush = Instant::now();
            w.flushing = false;
            self.turn.notify_all();
        }
    }

    /// Waits for the job to be running (not paused) and for this chunk's
    /// turn at the pace (`len` bytes at the speed, over every worker), and
    /// for no flush to be under way; then counts this worker as copying.
    /// Returns the pace's number its bytes were counted in (a pace starts
    /// afresh at a new speed or a resume), `None` if cancelled meanwhile.
    fn wait(&self, len: u64) -> Option<u64> {
        let job = self.job;
        // The pace this worker's bytes are counted in, and when they are
        // due.
        let mut booked: Option<(u64, Instant)> = None;
        loop {
            let st = job.state();
            if st.cancel {
                return None;
            }
            let mut w = self.walk();
            let st = job.state();
            if st.paused {
                // Paused: the status changes once, whichever worker sees
                // it first; a booking is given back.
                if let Some((pace, _)) = booked.take()
                    && pace == w.pace
                {
                    w.paced = w.paced.saturating_sub(len);
                }
                if st.status != JobStatus::Paused {
                    job.set(|s| s.busy = w.copying > 0);
                    (self.status)(JobStatus::Paused);
                }
                drop(w);
                let _ = job.sleep(Duration::from_millis(200));
                continue;
            }
            if st.status == JobStatus::Paused {
                (self.status)(JobStatus::Running);
                w.new_pace(st.speed);
            }
            if st.speed != w.speed {
                w.new_pace(st.speed);
            }
            // A booking of a pace since replaced is void.
            let (pace, due) = match booked {
                Some((pace, due)) if pace == w.pace => (pace, due),
                _ => {
                    let due =
                        w.since + Duration::from_secs_f64(w.paced as f64 / w.speed.max(1) as f64);
                    w.paced += len;
                    booked = Some((w.pace, due));
                    (w.pace, due)
                }
            };
            let now = Instant::now();
            if w.speed > 0 && due > now {
                drop(w);
                // Woken early by a new speed, a pause or a cancel: looked
                // at again.
                let _ = job.sleep(due - now);
                continue;
            }
            if w.flushing {
                drop(self.turn.wait(w).unwrap_or_else(|p| p.into_inner()));
                continue;
            }
            w.copying += 1;
            job.set(|s| s.busy = true);
            return Some(pace);
        }
    }
}

impl Walk {
    /// The pace starts afresh (a new speed, a resume).
    fn new_pace(&mut self, speed: u64) {
        self.pace += 1;
        (self.speed, self.since, self.paced) = (speed, Instant::now(), 0);
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

    /// `n` chunks of 1 KiB that take `copy` each to resync; chunks in
    /// `stuck` "succeed" without their mark ever clearing. Counts the
    /// resyncs (per chunk) and the most seen at once.
    struct Slow {
        todo: Mutex<Vec<bool>>,
        stuck: Vec<u64>,
        copy: Duration,
        calls: Mutex<Vec<u32>>,
        now: Mutex<(u32, u32)>,
        started: Mutex<Vec<Instant>>,
    }

    impl Slow {
        fn new(n: usize, copy: Duration, stuck: Vec<u64>) -> Slow {
            Slow {
                todo: Mutex::new(vec![true; n]),
                stuck,
                copy,
                calls: Mutex::new(vec![0; n]),
                now: Mutex::new((0, 0)),
                started: Mutex::new(Vec::new()),
            }
        }
        fn total(&self) -> u32 {
            self.calls.lock().unwrap().iter().sum()
        }
        fn most_at_once(&self) -> u32 {
            self.now.lock().unwrap().1
        }
    }

    impl ResyncTarget for Slow {
        fn next(&self, from: u64) -> Option<(u64, u64, u64)> {
            let t = self.todo.lock().unwrap();
            (from..t.len() as u64)
                .find(|&i| t[i as usize])
                .map(|i| (i, i * 1024, 1024))
        }
        fn work(&self) -> u64 {
            self.todo.lock().unwrap().iter().filter(|&&b| b).count() as u64 * 1024
        }
        fn resync(&self, offset: u64, _len: u64) -> Result<(), Errno> {
            let i = offset / 1024;
            {
                let mut n = self.now.lock().unwrap();
                n.0 += 1;
                n.1 = n.1.max(n.0);
            }
            self.started.lock().unwrap().push(Instant::now());
            self.calls.lock().unwrap()[i as usize] += 1;
            std::thread::sleep(self.copy);
            if !self.stuck.contains(&i) {
                self.todo.lock().unwrap()[i as usize] = false;
            }
            self.now.lock().unwrap().0 -= 1;
            Ok(())
        }
        fn flush(&self) -> Result<(), Errno> {
            Ok(())
        }
    }

    /// R-SYNC-5 with several chunks in flight: they overlap, every chunk is
    /// copied once, a chunk whose mark never clears is given up after 8
    /// attempts (counted over all workers), and the job ends with
    /// offset == len.
    #[test]
    fn r_sync_5_parallel_copies_overlap_count_and_give_up() {
        let f = Slow::new(24, Duration::from_millis(20), vec![5]);
        let job = Job::with_workers(0, 4);
        assert_eq!(job.workers(), 4);
        let t = Instant::now();
        let mut done = None;
        let end = job.run(&f, &mut |e| {
            if let JobEvent::Completed(s) = e {
                done = Some(s);
            }
        });
        let took = t.elapsed();
        assert!(
            f.most_at_once() >= 2,
            "copies overlapped: {}",
            f.most_at_once()
        );
        assert!(f.most_at_once() <= 4, "no more than the workers");
        let calls = f.calls.lock().unwrap().clone();
        assert_eq!(calls[5], 8, "given up after 8 attempts: {calls:?}");
        assert!(
            calls.iter().enumerate().all(|(i, &c)| i == 5 || c == 1),
            "every other chunk copied once: {calls:?}"
        );
        assert_eq!(end.failed, 1);
        assert_eq!(end.offset, 23 * 1024 + 8 * 1024, "{end:?}");
        assert_eq!(end.len, end.offset + 1024, "the chunk given up is left");
        assert_eq!(done.map(|d| (d.offset, d.len)), Some((end.offset, end.len)));
        // 31 copies of 20 ms one at a time would take 620 ms.
        assert!(took < Duration::from_millis(560), "{took:?}");
    }

    /// R-SYNC-5: the rate limit holds over all the workers together.
    #[test]
    fn r_sync_5_parallel_copies_keep_to_the_rate_limit() {
        let f = Slow::new(12, Duration::from_millis(1), vec![]);
        // 8 KiB/s: twelve 1 KiB chunks, the last due at 11/8 s.
        let job = Job::with_workers(8192, 4);
        let t = Instant::now();
        let end = job.run(&f, &mut |_| {});
        let took = t.elapsed();
        assert_eq!((end.offset, end.len), (12 * 1024, 12 * 1024));
        assert!(took >= Duration::from_millis(1300), "{took:?}");
        let started = f.started.lock().unwrap().clone();
        // By any moment, no more bytes than the pace allows (one chunk of
        // slack for the one due at the start).
        for (k, s) in started.iter().enumerate() {
            let allowed = (s.duration_since(t).as_secs_f64() * 8.0).floor() as usize + 1;
            assert!(k < allowed, "copy {k} started at {:?}", s.duration_since(t));
        }
    }

    /// R-SYNC-5: paused, no worker starts a copy (those under way finish);
    /// resumed, they go on; cancelled, every worker stops and no copy
    /// starts after the job returned.
    #[test]
    fn r_sync_5_parallel_copies_pause_resume_and_cancel() {
        let f = std::sync::Arc::new(Slow::new(400, Duration::from_millis(5), vec![]));
        let job = std::sync::Arc::new(Job::with_workers(0, 4));
        let (j, g) = (job.clone(), f.clone());
        let h = std::thread::spawn(move || {
            let mut ev = Vec::new();
            let end = j.run(&*g, &mut |e| ev.push(e));
            (end, ev)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(job.pause());
        // Copies under way finish; then none starts.
        std::thread::sleep(Duration::from_millis(100));
        let at = f.total();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(f.total(), at, "no copy while paused");
        let st = job.state();
        assert!(
            st.paused && !st.busy && st.status == JobStatus::Paused,
            "{st:?}"
        );
        assert!(job.resume());
        std::thread::sleep(Duration::from_millis(100));
        assert!(f.total() > at, "resumed");
        job.cancel();
        let (end, ev) = h.join().unwrap();
        let after = f.total();
        assert!(end.offset < 400 * 1024, "cancelled before the end: {end:?}");
        assert_eq!(u64::from(after) * 1024, end.offset, "every copy counted");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(f.total(), after, "nothing after the job returned");
        assert!(ev.iter().any(|e| matches!(e, JobEvent::Cancelled(_))));
        let statuses: Vec<JobStatus> = ev
            .iter()
            .filter_map(|e| match e {
                JobEvent::Status(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(
            statuses,
            [
                JobStatus::Created,
                JobStatus::Running,
                JobStatus::Paused,
                JobStatus::Running,
                JobStatus::Aborting,
                JobStatus::Concluded,
                JobStatus::Null
            ],
            "each status change once, whatever the workers"
        );
    }
}
