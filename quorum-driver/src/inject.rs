//! Error injection with QEMU blkdebug's meaning: the rules and the state
//! every driver's injecting child wraps around its inner child.
//!
//! QEMU tests quorum by putting a `blkdebug` node under a child
//! (`children.0.file.driver=blkdebug, ….inject-error.0.event=read_aio,
//! ….errno=5`). [`InjectState`] reproduces what that does — the blocking
//! driver's `InjectChild`, the async driver's and the simulator's disks all
//! consult it before each operation — so that a front end given the same
//! rules produces the same results and events as QEMU.
//! The behaviour, checked against QEMU 10.0.2 with `qemu-io` and read from
//! `block/blkdebug.c`:
//!
//! - A rule is attached to an *event*, not to an operation. `read_aio` fires
//!   when the child is read, `write_aio` when it is written (a rewrite done by
//!   `rewrite-corrupted` is a write too) — but **not** on write-zeroes —, and
//!   `flush_to_disk` when the child is flushed *and* something was written
//!   since its last successful flush (a clean child's flush is a no-op that
//!   fires nothing and cannot fail).
//! - When an event with rules fires, the list of *active* rules becomes
//!   exactly that event's rules (the previously active ones are dropped).
//!   Events without rules leave the active list alone.
//! - Every operation — read, write, write-zeroes, flush — is then checked
//!   against the active rules, whatever event activated them: once the first
//!   read of a child fired its `read_aio` rule, the child's writes,
//!   write-zeroes and flushes fail too, until another event with rules
//!   replaces the active list. The operation that fired the event is checked
//!   after firing it, so it fails itself.
//! - `sector` restricts a rule to operations whose byte range contains
//!   `sector * 512`; a flush has no range, so it only matches rules without
//!   `sector`. The event still fires for every operation.
//! - `once` removes the rule after it failed one operation.
//! - A failed operation does nothing; a failed write still makes the child
//!   "written since its last flush".
//! - The first matching active rule, in the order the rules were given, wins.

use std::io;

use quorum_proto::Errno;

/// The blkdebug event a rule is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InjectEvent {
    /// `read_aio`: the child is read.
    Read,
    /// `write_aio`: the child is written (not on write-zeroes).
    Write,
    /// `flush_to_disk`: the child is flushed after a write.
    Flush,
}

impl InjectEvent {
    /// blkdebug's name for the event.
    pub const fn blkdebug_name(self) -> &'static str {
        match self {
            InjectEvent::Read => "read_aio",
            InjectEvent::Write => "write_aio",
            InjectEvent::Flush => "flush_to_disk",
        }
    }
}

/// One `inject-error` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InjectRule {
    /// The event that activates the rule.
    pub event: InjectEvent,
    /// The error returned by the operations the rule fails.
    pub errno: Errno,
    /// Only operations whose range contains this sector (512 bytes) fail.
    pub sector: Option<u64>,
    /// Fail one operation, then remove the rule.
    pub once: bool,
}

/// The rules of one injected child and which of them are armed: the whole
/// blkdebug logic, shared by every driver's injecting child, so all fail
/// exactly the same operations.
#[derive(Clone, Debug)]
pub struct InjectState {
    /// The rules in the order given; `None` once a `once` rule fired.
    rules: Vec<Option<InjectRule>>,
    /// Indices into `rules`, in order.
    active: Vec<usize>,
    /// Writes so far (a generation count, as QEMU keeps).
    written: u64,
    /// `written` as of the last flush that succeeded: equal means clean. A
    /// write during a flush leaves the child dirty, as in QEMU.
    flushed: u64,
}

impl InjectState {
    /// `rules`, none armed yet.
    pub fn new(rules: Vec<InjectRule>) -> InjectState {
        InjectState {
            rules: rules.into_iter().map(Some).collect(),
            active: Vec::new(),
            written: 0,
            flushed: 0,
        }
    }

    /// `event` happened: if it has rules, they become the armed ones.
    pub fn fire(&mut self, event: InjectEvent) {
        let hits: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].is_some_and(|r| r.event == event))
            .collect();
        if !hits.is_empty() {
            self.active = hits;
        }
    }

    /// Before a read: the read fires `read_aio`, then the armed rules decide.
    pub fn before_read(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.fire(InjectEvent::Read);
        self.check(offset, len)
    }

    /// Before a write (or a rewrite): fires `write_aio`; the child is dirty.
    pub fn before_write(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.fire(InjectEvent::Write);
        self.written += 1;
        self.check(offset, len)
    }

    /// Before a write-zeroes: no event fires, but armed rules apply.
    pub fn before_write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.written += 1;
        self.check(offset, len)
    }

    /// Before a flush: `Ok(None)` when the child is clean (QEMU does not
    /// flush it, and no event fires); otherwise `flush_to_disk` fires, the
    /// armed rules decide, and the generation to pass to
    /// [`InjectState::flushed`] after a successful flush is returned.
    pub fn before_flush(&mut self) -> io::Result<Option<u64>> {
        if self.written == self.flushed {
            return Ok(None);
        }
        let generation = self.written;
        self.fire(InjectEvent::Flush);
        self.check(0, 0)?;
        Ok(Some(generation))
    }

    /// A flush that started at `generation` succeeded: what was written
    /// before it is clean (later writes are not).
    pub fn flushed(&mut self, generation: u64) {
        self.flushed = self.flushed.max(generation);
    }

    /// The error an operation on `offset..offset + len` fails with, if an
    /// armed rule matches it (a flush is `0, 0`: only rules without a sector).
    pub fn check(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let hit = self.active.iter().position(|&i| {
            self.rules[i].is_some_and(|r| match r.sector {
                None => true,
                Some(s) => {
                    let at = s.saturating_mul(512);
                    len != 0 && at >= offset && at - offset < len
                }
            })
        });
        let Some(pos) = hit else { return Ok(()) };
        let idx = self.active[pos];
        let Some(rule) = self.rules[idx] else {
            return Ok(());
        };
        if rule.once {
            self.active.remove(pos);
            self.rules[idx] = None;
        }
        Err(io::Error::from_raw_os_error(rule.errno.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(event: InjectEvent, sector: Option<u64>, once: bool) -> InjectRule {
        InjectRule {
            event,
            errno: Errno::ENOSPC,
            sector,
            once,
        }
    }

    fn errno<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn a_write_during_a_flush_keeps_the_child_dirty() {
        let mut st = InjectState::new(Vec::new());
        assert_eq!(st.before_flush().unwrap(), None, "clean at start");
        st.before_write(0, 512).unwrap();
        let g = st.before_flush().unwrap().expect("dirty after a write");
        st.before_write(512, 512).unwrap(); // lands while the flush runs
        st.flushed(g);
        assert!(
            st.before_flush().unwrap().is_some(),
            "the second write still needs a flush"
        );
        let g2 = st.before_flush().unwrap().unwrap();
        st.flushed(g2);
        assert_eq!(st.before_flush().unwrap(), None);
    }

    #[test]
    fn an_event_arms_its_rules_for_every_kind_of_operation() {
        let mut st = InjectState::new(vec![rule(InjectEvent::Read, None, false)]);
        assert!(st.before_write(0, 512).is_ok(), "nothing armed yet");
        assert_eq!(errno(st.before_read(0, 512)), Some(28));
        assert_eq!(errno(st.before_write_zeroes(0, 512)), Some(28));
        assert_eq!(errno(st.before_flush()), Some(28), "dirty, so checked");
    }

    #[test]
    fn sector_and_once() {
        let mut st = InjectState::new(vec![rule(InjectEvent::Read, Some(8), true)]);
        assert!(st.before_read(0, 4096).is_ok(), "sectors 0..8 exclude 8");
        assert_eq!(errno(st.before_read(4096, 1)), Some(28));
        assert!(st.before_read(4096, 1).is_ok(), "once: gone");
    }
}
