//! The core as the simulator drives it: bare, or behind the driver kit's
//! contract checker ([`quorum_driver::testing::Checker`]), which holds every
//! call and every action to the core's contract and every completion to the
//! reference model of SPEC — on top of the simulator's own invariants, which
//! judge data against the oracle. Checked is the default; the benchmark runs
//! bare, to measure the simulator itself.

use quorum_driver::testing::Checker;
use quorum_proto::{
    Action, ChildId, Config, ConfigError, Errno, Error, Extent, MemberError, Quorum, ReadBuffers,
    Request, RequestId, sync::Marks,
};

/// 16 children, 32 requests in flight, room for every action they can
/// produce with sync tracking on (32 × (5 × 16 + 5); 3 × 16 + 2 without).
const C: usize = 16;
const R: usize = 32;
const A: usize = 2720;

/// Boxed: the fixed-capacity core is ~90 KB, too much to move around on
/// test threads' stacks.
pub(super) enum Core {
    Bare(Box<Quorum<C, R, A>>),
    Checked(Box<Checker<C, R, A>>),
}

macro_rules! both {
    ($self:ident, $q:ident => $e:expr) => {
        match $self {
            Core::Bare($q) => $e,
            Core::Checked($q) => $e,
        }
    };
}

impl Core {
    pub(super) fn new(config: Config, checked: bool) -> Result<Core, ConfigError> {
        Ok(if checked {
            Core::Checked(Box::new(Checker::new(config)?))
        } else {
            Core::Bare(Quorum::new_boxed(config)?)
        })
    }

    pub(super) fn checked(&self) -> bool {
        matches!(self, Core::Checked(_))
    }

    pub(super) fn children(&self) -> &[ChildId] {
        both!(self, q => q.children())
    }

    pub(super) fn submit(&mut self, id: RequestId, req: Request) -> Result<(), Error> {
        both!(self, q => q.submit(id, req))
    }

    pub(super) fn submit_with(
        &mut self,
        id: RequestId,
        req: Request,
        marks: &dyn Marks,
    ) -> Result<(), Error> {
        both!(self, q => q.submit_with(id, req, marks))
    }

    pub(super) fn handle_marked(&mut self, id: RequestId) -> Result<(), Error> {
        both!(self, q => q.handle_marked(id))
    }

    /// Differences settled so far (R-SYNC-3), as the core counts them.
    pub(super) fn settled_differences(&self) -> u64 {
        match self {
            Core::Bare(q) => q.settled_differences(),
            Core::Checked(q) => q.core().settled_differences(),
        }
    }

    pub(super) fn poll_action(&mut self) -> Option<Action> {
        both!(self, q => q.poll_action())
    }

    pub(super) fn handle_read<B: ReadBuffers + ?Sized>(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
        buffers: &B,
    ) -> Result<(), Error> {
        both!(self, q => q.handle_read(id, slot, result, buffers))
    }

    pub(super) fn handle_write(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        both!(self, q => q.handle_write(id, slot, result))
    }

    pub(super) fn handle_flush(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        both!(self, q => q.handle_flush(id, slot, result))
    }

    pub(super) fn handle_rewrite(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        both!(self, q => q.handle_rewrite(id, slot, result))
    }

    pub(super) fn handle_block_status(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<Extent, Errno>,
    ) -> Result<(), Error> {
        both!(self, q => q.handle_block_status(id, slot, result))
    }

    pub(super) fn cancel(&mut self, id: RequestId) -> Result<(), Error> {
        both!(self, q => q.cancel(id))
    }

    pub(super) fn start_drain(&mut self) {
        both!(self, q => q.start_drain())
    }

    pub(super) fn end_drain(&mut self) -> Result<(), Error> {
        both!(self, q => q.end_drain())
    }

    pub(super) fn is_drained(&self) -> bool {
        both!(self, q => q.is_drained())
    }

    pub(super) fn add_child(&mut self) -> Result<ChildId, MemberError> {
        both!(self, q => q.add_child())
    }

    pub(super) fn remove_child(&mut self, child: ChildId) -> Result<(), MemberError> {
        both!(self, q => q.remove_child(child))
    }
}
