//! The scheduler: every child operation the core asks for completes at a
//! virtual time (slow children take ten times longer, and with reordering a
//! random latency), so completions reach the core in an order the seed
//! decides.

use super::*;

impl Sim {
    /// Carries out every queued action.
    pub(super) fn drain(&mut self) {
        while let Some(a) = self.q.poll_action() {
            self.tape.out(&a, || describe(&a));
            match a {
                Action::Event { id, event } => {
                    if let Some(log) = self.event_log.as_mut() {
                        log.push((id, event));
                    }
                    match event {
                        Event::ReportBad { .. } => self.stats.reports += 1,
                        Event::Failure { .. } => self.stats.failures += 1,
                    }
                    match self.live.get_mut(&id.0) {
                        Some(l) if l.cancelled.is_some() => self.violated(format!(
                            "R-CANCEL-1: event for cancelled request {id}: {event:?}"
                        )),
                        Some(l) => l.events.push(event),
                        None => self.violated(format!("event for unknown request {id}: {event:?}")),
                    }
                }
                Action::Complete { id, outcome } => self.completed(id.0, outcome),
                Action::Answer { id, outcome } => self.answered(id.0, outcome),
                Action::Mark { id, mark } => self.mark(id.0, mark),
                other => {
                    if self.sync.is_some() {
                        self.check_read_issue(&other);
                        self.check_write_issue(&other);
                    }
                    let id = other.id();
                    match self.live.get_mut(&id.0) {
                        Some(l) if l.cancelled.is_some() => {
                            self.violated(format!(
                                "R-CANCEL-1: cancelled request {id} issued {}",
                                describe(&other)
                            ));
                            continue;
                        }
                        Some(l) => {
                            l.outstanding += 1;
                            l.issued += 1;
                        }
                        None => {}
                    }
                    if let Action::Rewrite { id, slot, .. } = other {
                        match self.live.get_mut(&id.0) {
                            Some(l)
                                if !l.concurrent.is_empty() && self.cfg.mode == Mode::Safety =>
                            {
                                let msg = format!(
                                    "request {id} rewrites slot {slot} although a write overlapped it"
                                );
                                self.violated(msg);
                            }
                            Some(l) => {
                                let first = l.rewrites.is_empty();
                                l.rewrites.push(slot);
                                let mut settles = false;
                                if let (Some(ls), Action::Rewrite { source, .. }) =
                                    (l.sync.as_mut(), other)
                                {
                                    ls.source = Some(source);
                                    settles = ls.settle;
                                    if ls.overlapped_settle && self.cfg.mode == Mode::Safety {
                                        let msg = format!(
                                            "R-SYNC-3: request {id} rewrites slot {slot} although an overlapping settle chose its winner first"
                                        );
                                        self.violated(msg);
                                    }
                                }
                                if first && settles {
                                    self.settle_started(id.0);
                                }
                            }
                            None => self.violated(format!("rewrite for unknown request {id}")),
                        }
                    }
                    self.schedule(other);
                }
            }
        }
    }

    pub(super) fn schedule(&mut self, a: Action) {
        let child = match a {
            Action::Read { child, .. }
            | Action::Write { child, .. }
            | Action::WriteZeroes { child, .. }
            | Action::Flush { child, .. }
            | Action::BlockStatus { child, .. }
            | Action::Rewrite { child, .. } => child,
            _ => return,
        };
        if let Action::Rewrite { id, slot, .. } = a {
            self.rewrites_out.insert((id.0, slot), self.next_id);
        }
        if let Action::Flush { id, slot, .. } = a
            && self.cfg.crash
        {
            // What the flush will make durable: the disk's writes so far.
            let d = self.disk_id(child);
            let seq = self.disks.get(&d).map_or(0, |k| k.volatile.seq());
            self.flush_seq.insert((id.0, slot), seq);
        }
        let mut latency = 1;
        if self.rates.reorder != 0 {
            latency += self.tape.below(20);
        }
        if self.slow.contains(&self.disk_id(child)) {
            latency *= 10;
        }
        self.seq += 1;
        self.queue.push(Reverse(Pending {
            at: self.now + latency,
            seq: self.seq,
            action: ActionKey(Op::Child(a)),
        }));
    }
}
