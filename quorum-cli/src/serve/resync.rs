//! `quorum serve --map`: the sync map of the running device and its
//! background resync (SPEC R-SYNC-4..8). A supervisor thread starts a job
//! whenever there is work that can be done now — unsettled chunks (after a
//! crash), or chunks stale on a child that can be reached (an NBD child
//! back from a partition, a child added to be rebuilt) — and the job
//! ([`quorum_sync::sync::Job`]) walks them while clients read and write.
//! The job shows in QMP as a block job (`query-block-jobs`, `block-job-*`,
//! `JOB_STATUS_CHANGE`, `BLOCK_JOB_COMPLETED`, `BLOCK_JOB_CANCELLED`) and,
//! when stderr is a terminal, as a progress line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum_qmp::event::outgoing;
use quorum_qmp::manager::{JobInfo, JobOp};
use quorum_qmp::message::QmpError;
use quorum_sync::Device;
use quorum_sync::sync::{Job, JobEvent, JobState, ResyncTarget};
use serde_json::json;

use super::qmp::Hub;
use crate::io::now;

/// The job's id and QMP `device`.
pub(crate) const JOB_ID: &str = "resync";
/// Its QMP `type` (not one of QEMU's: `x-`).
pub(crate) const JOB_TYPE: &str = "x-resync";

/// The background resync of a running device.
pub(crate) struct Resyncer {
    device: Arc<Device>,
    hub: Option<Arc<Hub>>,
    job: Mutex<Option<Arc<Job>>>,
    speed: AtomicU64,
    /// After a cancel: no new job until the work changes.
    suppressed: Mutex<Option<u64>>,
    stop: AtomicBool,
}

impl Resyncer {
    /// A resyncer for `device` at `speed` bytes per second (0: no limit),
    /// its supervisor started.
    pub(crate) fn start(device: Arc<Device>, hub: Option<Arc<Hub>>, speed: u64) -> Arc<Resyncer> {
        let r = Arc::new(Resyncer {
            device,
            hub,
            job: Mutex::new(None),
            speed: AtomicU64::new(speed),
            suppressed: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let me = r.clone();
        let _ = std::thread::Builder::new()
            .name("resync".into())
            .spawn(move || me.supervise());
        r
    }

    /// Stops starting jobs and cancels the one running; waits for it.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = lock(&self.job).clone() {
            j.cancel();
        }
        let t = Instant::now();
        while lock(&self.job).is_some() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A child was attached: new work, start again even after a cancel.
    pub(crate) fn poke(&self) {
        *lock(&self.suppressed) = None;
    }

    fn supervise(self: Arc<Self>) {
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            if lock(&self.job).is_some() {
                continue;
            }
            let work = self.device.work();
            {
                let mut s = lock(&self.suppressed);
                match *s {
                    Some(w) if w == work => continue,
                    Some(_) => *s = None,
                    None => {}
                }
            }
            if work == 0 || self.stop.load(Ordering::SeqCst) {
                continue;
            }
            let job = Arc::new(Job::new(self.speed.load(Ordering::SeqCst)));
            *lock(&self.job) = Some(job.clone());
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("resync-job".into())
                .spawn(move || me.run(job));
        }
    }

    fn run(&self, job: Arc<Job>) {
        let tty = std::io::stderr().is_terminal();
        let started = Instant::now();
        let mut shown = Instant::now();
        let mut events = |e: JobEvent| {
            self.event(&e);
            if tty && shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                progress(&job.state(), started);
            }
        };
        let end = job.run(&*self.device, &mut events);
        if tty {
            progress(&end, started);
            eprintln!();
        }
        let msg = if end.cancel {
            format!("resync cancelled after {} of {} bytes", end.offset, end.len)
        } else {
            format!(
                "resync done: {} bytes in {:.1} s{}",
                end.offset,
                started.elapsed().as_secs_f64(),
                if end.failed > 0 {
                    format!(", {} chunk(s) left without quorum", end.failed)
                } else {
                    String::new()
                }
            )
        };
        let _ = writeln!(std::io::stderr(), "quorum serve: {msg}");
        if end.cancel {
            *lock(&self.suppressed) = Some(self.device.work());
        }
        // The map as it stands now, whatever happens next.
        let _ = self.device.write_map();
        *lock(&self.job) = None;
    }

    fn event(&self, e: &JobEvent) {
        let Some(hub) = &self.hub else { return };
        let (name, data) = match e {
            JobEvent::Status(s) => (
                "JOB_STATUS_CHANGE",
                json!({"status": s.as_str(), "id": JOB_ID}),
            ),
            JobEvent::Completed(st) | JobEvent::Cancelled(st) => {
                let mut d = json!({
                    "device": JOB_ID, "len": st.len, "offset": st.offset, "speed": st.speed,
                    "type": JOB_TYPE,
                });
                if let (JobEvent::Completed(_), true) = (e, st.failed > 0) {
                    d["error"] = json!(format!(
                        "{} chunk(s) have no quorum among the children in sync",
                        st.failed
                    ));
                }
                let name = if matches!(e, JobEvent::Completed(_)) {
                    "BLOCK_JOB_COMPLETED"
                } else {
                    "BLOCK_JOB_CANCELLED"
                };
                (name, d)
            }
        };
        hub.publish(outgoing(name, data, now()));
    }

    /// The job, as `query-block-jobs` shows it.
    pub(crate) fn jobs(&self) -> Vec<JobInfo> {
        let Some(j) = lock(&self.job).clone() else {
            return Vec::new();
        };
        let st = j.state();
        vec![JobInfo {
            device: JOB_ID.into(),
            kind: JOB_TYPE.into(),
            len: st.len,
            offset: st.offset,
            speed: st.speed,
            status: st.status.as_str().into(),
            paused: st.paused,
            busy: st.busy,
            ready: false,
        }]
    }

    /// `block-job-*` for `device`; `None` when no such job runs.
    pub(crate) fn control(&self, device: &str, op: JobOp) -> Option<Result<(), QmpError>> {
        if device != JOB_ID {
            return None;
        }
        let j = lock(&self.job).clone()?;
        Some(match op {
            JobOp::SetSpeed(s) => {
                self.speed.store(s, Ordering::SeqCst);
                j.set_speed(s);
                Ok(())
            }
            JobOp::Pause => {
                if j.pause() {
                    Ok(())
                } else {
                    Err(QmpError::generic("Job is already paused"))
                }
            }
            JobOp::Resume => {
                if j.resume() {
                    Ok(())
                } else {
                    Err(QmpError::generic("Can't resume a job that was not paused"))
                }
            }
            JobOp::Cancel => {
                j.cancel();
                Ok(())
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `resync: 12.0 MiB of 100.0 MiB (12%), 45.0 MiB/s, 2 s left`, in place.
fn progress(st: &JobState, started: Instant) {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = st.offset as f64 / secs;
    let pct = (100 * st.offset).checked_div(st.len).unwrap_or(100);
    let left = if rate > 0.0 {
        format!(
            "{:.0} s left",
            (st.len - st.offset.min(st.len)) as f64 / rate
        )
    } else {
        "estimating".into()
    };
    let _ = write!(
        std::io::stderr(),
        "\rquorum serve: resync {:.1} MiB of {:.1} MiB ({pct}%), {:.1} MiB/s, {left}{}   ",
        mib(st.offset),
        mib(st.len),
        mib(rate as u64),
        if st.paused { ", paused" } else { "" }
    );
}
