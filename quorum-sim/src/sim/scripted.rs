//! Scripted scenarios: explicit requests and explicit faults, through the
//! same simulated disks, scheduler and checker as seeded runs. Completions
//! come in issue order and a round's completions reach the core in slot
//! order, as in the other drivers, so a script gives the same events through
//! all of them.

use super::*;

impl Sim {
    /// A scripted simulation of `config` over children of `size` zero bytes
    /// (any size; blkverify is not simulated). The checker runs in
    /// over-threshold mode: every request's events and outcome are checked,
    /// data is the script's business.
    pub fn scripted(config: Config, size: u64) -> Result<Sim, String> {
        let config = config.validate(16).map_err(|e| e.to_string())?;
        if config.blkverify {
            return Err("the simulator does not model blkverify".into());
        }
        if config.fifo_rewrite_failed {
            return Err("the simulator does not model fifo_rewrite_failed".into());
        }
        let cfg = SimConfig {
            seed: 0,
            children: config.children,
            threshold: config.threshold,
            ops: 0,
            size,
            depth: 1,
            pattern: config.read_pattern,
            rewrite: config.rewrite_corrupted,
            mode: Mode::OverThreshold,
            faults: crate::config::Faults::None,
            len: 0,
            early: config.early_quorum,
            cancel: false,
            sync: 0,
            crash: false,
        };
        let mut sim = Sim::with_tape(cfg, Tape::live(0, false));
        sim.event_log = Some(Vec::new());
        Ok(sim)
    }

    /// Checks this scripted run in safety mode from now on: `faulty` are the
    /// children the script damages ([`Sim::poke`], [`Sim::inject`]), and
    /// every successful read must return the last acknowledged data (at its
    /// answer, with early quorum), every request must succeed, and no repair
    /// may write anything else. Whether the script keeps within
    /// [`crate::faults::safe_faulty`] (or [`crate::faults::safe_faulty_early`])
    /// is not checked: a script beyond it shows what the caps are for.
    pub fn check_safety(&mut self, faulty: &[ChildId]) {
        self.cfg.mode = Mode::Safety;
        self.faulty = faulty.iter().map(|c| c.0).collect();
    }

    /// Makes `child` slow (10× latency): its completions come after the
    /// others', so with early quorum it is a straggler.
    pub fn slow(&mut self, child: ChildId) {
        self.slow.insert(child.0);
    }

    /// Gives `child` blkdebug-style rules (see `quorum_driver::InjectState`).
    pub fn inject(&mut self, child: ChildId, rules: Vec<quorum_driver::InjectRule>) {
        if let Some(d) = self.disks.get_mut(&child.0) {
            d.inject = Some(InjectState::new(rules));
        }
    }

    /// Overwrites `child`'s bytes behind the device's back (silent corruption).
    pub fn poke(&mut self, child: ChildId, offset: u64, bytes: &[u8]) {
        if let Some(d) = self.disks.get_mut(&child.0) {
            let o = offset as usize;
            if let Some(dst) = d.data.get_mut(o..o + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
    }

    /// Runs one request to completion: its outcome and, for a successful
    /// read, its data. `data` is a write's payload.
    pub fn request(
        &mut self,
        req: Request,
        data: Option<&[u8]>,
    ) -> Result<(Outcome, Option<Vec<u8>>), SimError> {
        let (offset, len) = req.range();
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.cfg.size)
            || data.is_some_and(|d| d.len() as u64 != len)
        {
            return Err(SimError::Invariant {
                seed: 0,
                step: self.tape.steps,
                message: format!(
                    "scripted request {offset}+{len} does not fit the {}-byte device (or its data)",
                    self.cfg.size
                ),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.script_data = data.map(<[u8]>::to_vec);
        self.submit(id, req);
        self.drain();
        while let Some(Reverse(p)) = self.queue.pop() {
            self.now = p.at;
            self.run_op(p.action.0);
            self.drain();
        }
        if let Some(message) = self.error.take() {
            return Err(SimError::Invariant {
                seed: 0,
                step: self.tape.steps,
                message,
            });
        }
        self.finished.take().ok_or_else(|| SimError::Invariant {
            seed: 0,
            step: self.tape.steps,
            message: format!("request #{id} never completed"),
        })
    }

    /// The events so far, in order; the log starts empty again.
    pub fn take_events(&mut self) -> Vec<(RequestId, Event)> {
        self.event_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A child's bytes.
    pub fn disk(&self, child: ChildId) -> Option<&[u8]> {
        self.disks.get(&child.0).map(|d| d.data.as_slice())
    }
}
