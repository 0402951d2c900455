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
use std::sync::{Arc, Mutex, MutexGuard};

use quorum_proto::Errno;

use crate::child::Child;

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

/// A child whose operations fail as a blkdebug node with the given rules
/// would make them fail: `inner` behind an [`InjectState`] consulted before
/// each operation. This crate makes it a blocking [`Child`] when `C` is one;
/// the async driver makes it an async child the same way.
pub struct Injected<C> {
    inner: C,
    state: Mutex<InjectState>,
}

impl<C> std::fmt::Debug for Injected<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injected")
            .field("state", &*self.state())
            .finish_non_exhaustive()
    }
}

impl<C> Injected<C> {
    /// Wraps `inner` with `rules` (first matching rule wins).
    pub fn new(inner: C, rules: Vec<InjectRule>) -> Injected<C> {
        Injected {
            inner,
            state: Mutex::new(InjectState::new(rules)),
        }
    }

    /// The wrapped child.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The rules' state, to consult before an operation.
    pub fn state(&self) -> MutexGuard<'_, InjectState> {
        // Updates are plain field writes: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Child for Injected<Arc<dyn Child>> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.state().before_read(offset, buf.len() as u64)?;
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.state().before_write(offset, buf.len() as u64)?;
        self.inner.write_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.state().before_write_zeroes(offset, len)?;
        self.inner.write_zeroes(offset, len)
    }

    /// blkdebug's rules apply to block status only when asked to (its
    /// `iotype`), which `inject-error` here never does: passed through.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<quorum_proto::Extent> {
        self.inner.block_status(offset, len)
    }

    fn flush(&self) -> io::Result<()> {
        let Some(generation) = self.state().before_flush()? else {
            return Ok(());
        };
        self.inner.flush()?;
        self.state().flushed(generation);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn reachable(&self) -> bool {
        self.inner.reachable()
    }

    fn allocated(&self) -> Option<u64> {
        self.inner.allocated()
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

#[cfg(test)]
mod child_tests {
    use super::*;

    /// Bytes in memory, as a blocking child.
    struct Mem(Mutex<Vec<u8>>);

    impl Child for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let d = self.0.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
    }

    fn mem(n: usize) -> Arc<Mem> {
        Arc::new(Mem(Mutex::new(vec![0; n])))
    }

    type InjectChild = Injected<Arc<dyn Child>>;

    fn rule(event: InjectEvent, sector: Option<u64>, once: bool) -> InjectRule {
        InjectRule {
            event,
            errno: Errno::ENOSPC,
            sector,
            once,
        }
    }

    fn child(rules: Vec<InjectRule>) -> InjectChild {
        InjectChild::new(mem(1 << 16), rules)
    }

    fn errno(r: io::Result<()>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn read_rule_fails_the_read_that_fires_it_and_everything_after() {
        let c = child(vec![rule(InjectEvent::Read, None, false)]);
        let mut b = [0u8; 512];
        // Nothing is active before the first read.
        assert!(c.write_at(&b, 0).is_ok());
        assert!(c.flush().is_ok());
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(28));
        assert_eq!(errno(c.read_at(&mut b, 4096)), Some(28));
        assert_eq!(errno(c.write_at(&b, 0)), Some(28));
        assert_eq!(errno(c.write_zeroes(0, 512)), Some(28));
        // The failed write left the child dirty, so the flush reaches the rule.
        assert_eq!(errno(c.flush()), Some(28));
    }

    #[test]
    fn write_rule_is_not_fired_by_write_zeroes() {
        let c = child(vec![rule(InjectEvent::Write, None, false)]);
        let mut b = [0u8; 512];
        assert!(c.write_zeroes(0, 512).is_ok());
        assert!(c.read_at(&mut b, 0).is_ok());
        assert_eq!(errno(c.write_at(&b, 0)), Some(28));
        assert_eq!(errno(c.write_zeroes(0, 512)), Some(28));
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(28));
    }

    #[test]
    fn flush_rule_fires_only_on_a_dirty_flush() {
        let c = child(vec![rule(InjectEvent::Flush, None, false)]);
        let mut b = [0u8; 512];
        assert!(c.flush().is_ok(), "a clean flush fires nothing");
        assert!(c.write_at(&b, 0).is_ok());
        assert!(c.read_at(&mut b, 0).is_ok());
        assert_eq!(errno(c.flush()), Some(28));
        // Still dirty: the next flush fails again, and so does everything else.
        assert_eq!(errno(c.flush()), Some(28));
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(28));
    }

    #[test]
    fn sector_limits_the_range_and_never_matches_a_flush() {
        let c = child(vec![rule(InjectEvent::Read, Some(8), false)]);
        let mut b = [0u8; 4096];
        assert!(c.read_at(&mut b, 0).is_ok(), "sectors 0..8 exclude 8");
        assert_eq!(errno(c.read_at(&mut b, 4096)), Some(28));
        assert_eq!(errno(c.read_at(&mut b[..1], 4096)), Some(28));
        assert!(c.read_at(&mut b[..1], 4097).is_ok());
        assert!(c.write_at(&b, 0).is_ok());
        assert!(c.flush().is_ok());
    }

    #[test]
    fn once_fails_one_operation() {
        let c = child(vec![rule(InjectEvent::Read, None, true)]);
        let mut b = [0u8; 512];
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(28));
        assert!(c.read_at(&mut b, 0).is_ok());
        assert!(c.write_at(&b, 0).is_ok());
    }

    #[test]
    fn an_event_with_rules_replaces_the_active_list() {
        let c = child(vec![
            rule(InjectEvent::Read, None, false),
            InjectRule {
                errno: Errno::EPERM,
                ..rule(InjectEvent::Write, Some(100), false)
            },
        ]);
        let mut b = [0u8; 512];
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(28));
        // The write fires write_aio: only the sector-100 rule is active now.
        assert!(c.write_at(&b, 0).is_ok());
        // Write-zeroes fires nothing: the read rule is no longer active.
        assert!(c.write_zeroes(0, 512).is_ok());
        assert_eq!(errno(c.write_zeroes(100 * 512, 512)), Some(libc::EPERM));
        // A read fires read_aio again and brings its rule back.
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(28));
    }

    #[test]
    fn a_failed_operation_changes_nothing() {
        let inner = mem(4096);
        let c = InjectChild::new(inner.clone(), vec![rule(InjectEvent::Write, None, true)]);
        assert!(c.write_at(&[1; 512], 0).is_err());
        assert_eq!(*inner.0.lock().unwrap(), vec![0; 4096]);
        assert!(c.write_at(&[1; 512], 0).is_ok());
        assert_eq!(inner.0.lock().unwrap()[..512], [1; 512]);
    }
}
