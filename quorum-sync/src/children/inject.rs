//! A blocking child that fails as a QEMU blkdebug node with the given rules
//! would make it fail: [`quorum_driver::InjectState`] consulted before each
//! operation (its documentation has the rules, checked against QEMU 10.0.2).

use std::io;
use std::sync::{Arc, Mutex};

use quorum_driver::{Child, InjectRule, InjectState};

/// A child whose operations fail as a blkdebug node with the given rules
/// would make them fail (see the module documentation).
pub struct InjectChild {
    inner: Arc<dyn Child>,
    state: Mutex<InjectState>,
}

impl std::fmt::Debug for InjectChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectChild")
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl InjectChild {
    /// Wraps `inner` with `rules` (first matching rule wins).
    pub fn new(inner: Arc<dyn Child>, rules: Vec<InjectRule>) -> InjectChild {
        InjectChild {
            inner,
            state: Mutex::new(InjectState::new(rules)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InjectState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Child for InjectChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().before_read(offset, buf.len() as u64)?;
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().before_write(offset, buf.len() as u64)?;
        self.inner.write_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.lock().before_write_zeroes(offset, len)?;
        self.inner.write_zeroes(offset, len)
    }

    fn flush(&self) -> io::Result<()> {
        let Some(generation) = self.lock().before_flush()? else {
            return Ok(());
        };
        self.inner.flush()?;
        self.lock().flushed(generation);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemChild;
    use quorum_driver::{Errno, InjectEvent};

    fn rule(event: InjectEvent, sector: Option<u64>, once: bool) -> InjectRule {
        InjectRule {
            event,
            errno: Errno::ENOSPC,
            sector,
            once,
        }
    }

    fn child(rules: Vec<InjectRule>) -> InjectChild {
        InjectChild::new(Arc::new(MemChild::new(1 << 16)), rules)
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
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(libc::ENOSPC));
        assert_eq!(errno(c.read_at(&mut b, 4096)), Some(libc::ENOSPC));
        assert_eq!(errno(c.write_at(&b, 0)), Some(libc::ENOSPC));
        assert_eq!(errno(c.write_zeroes(0, 512)), Some(libc::ENOSPC));
        // The failed write left the child dirty, so the flush reaches the rule.
        assert_eq!(errno(c.flush()), Some(libc::ENOSPC));
    }

    #[test]
    fn write_rule_is_not_fired_by_write_zeroes() {
        let c = child(vec![rule(InjectEvent::Write, None, false)]);
        let mut b = [0u8; 512];
        assert!(c.write_zeroes(0, 512).is_ok());
        assert!(c.read_at(&mut b, 0).is_ok());
        assert_eq!(errno(c.write_at(&b, 0)), Some(libc::ENOSPC));
        assert_eq!(errno(c.write_zeroes(0, 512)), Some(libc::ENOSPC));
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(libc::ENOSPC));
    }

    #[test]
    fn flush_rule_fires_only_on_a_dirty_flush() {
        let c = child(vec![rule(InjectEvent::Flush, None, false)]);
        let mut b = [0u8; 512];
        assert!(c.flush().is_ok(), "a clean flush fires nothing");
        assert!(c.write_at(&b, 0).is_ok());
        assert!(c.read_at(&mut b, 0).is_ok());
        assert_eq!(errno(c.flush()), Some(libc::ENOSPC));
        // Still dirty: the next flush fails again, and so does everything else.
        assert_eq!(errno(c.flush()), Some(libc::ENOSPC));
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(libc::ENOSPC));
    }

    #[test]
    fn sector_limits_the_range_and_never_matches_a_flush() {
        let c = child(vec![rule(InjectEvent::Read, Some(8), false)]);
        let mut b = [0u8; 4096];
        assert!(c.read_at(&mut b, 0).is_ok(), "sectors 0..8 exclude 8");
        assert_eq!(errno(c.read_at(&mut b, 4096)), Some(libc::ENOSPC));
        assert_eq!(errno(c.read_at(&mut b[..1], 4096)), Some(libc::ENOSPC));
        assert!(c.read_at(&mut b[..1], 4097).is_ok());
        assert!(c.write_at(&b, 0).is_ok());
        assert!(c.flush().is_ok());
    }

    #[test]
    fn once_fails_one_operation() {
        let c = child(vec![rule(InjectEvent::Read, None, true)]);
        let mut b = [0u8; 512];
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(libc::ENOSPC));
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
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(libc::ENOSPC));
        // The write fires write_aio: only the sector-100 rule is active now.
        assert!(c.write_at(&b, 0).is_ok());
        // Write-zeroes fires nothing: the read rule is no longer active.
        assert!(c.write_zeroes(0, 512).is_ok());
        assert_eq!(errno(c.write_zeroes(100 * 512, 512)), Some(libc::EPERM));
        // A read fires read_aio again and brings its rule back.
        assert_eq!(errno(c.read_at(&mut b, 0)), Some(libc::ENOSPC));
    }

    #[test]
    fn a_failed_operation_changes_nothing() {
        let inner = Arc::new(MemChild::new(4096));
        let c = InjectChild::new(inner.clone(), vec![rule(InjectEvent::Write, None, true)]);
        assert!(c.write_at(&[1; 512], 0).is_err());
        assert_eq!(inner.contents(), vec![0; 4096]);
        assert!(c.write_at(&[1; 512], 0).is_ok());
        assert_eq!(&inner.contents()[..512], &[1; 512]);
    }
}
