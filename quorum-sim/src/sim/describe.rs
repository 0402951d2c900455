//! How requests and actions are written in traces.

use super::*;

pub(super) fn describe_req(r: &Request) -> String {
    match *r {
        Request::Read { offset, len } => format!("read {offset}+{len}"),
        Request::Write { offset, len } => format!("write {offset}+{len}"),
        Request::WriteZeroes { offset, len } => format!("zero {offset}+{len}"),
        Request::Flush => "flush".into(),
        Request::BlockStatus { offset, len } => format!("status {offset}+{len}"),
        Request::Resync { offset, len } => format!("resync {offset}+{len}"),
    }
}

/// One line per action, for traces.
pub(crate) fn describe(a: &Action) -> String {
    match *a {
        Action::Read {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("read {id} s{slot} {child} {offset}+{len}"),
        Action::Write {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("write {id} s{slot} {child} {offset}+{len}"),
        Action::WriteZeroes {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("zero {id} s{slot} {child} {offset}+{len}"),
        Action::Flush { id, slot, child } => format!("flush {id} s{slot} {child}"),
        Action::BlockStatus {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("status {id} s{slot} {child} {offset}+{len}"),
        Action::Rewrite {
            id,
            slot,
            child,
            source,
            offset,
            len,
        } => {
            format!("rewrite {id} s{slot} {child} from s{source} {offset}+{len}")
        }
        Action::Event { id, event } => format!("event {id} {event:?}"),
        Action::Answer { id, outcome } => format!("answer {id} {outcome:?}"),
        Action::Mark { id, mark } => format!("mark {id} {mark:?}"),
        Action::Complete { id, outcome } => format!("complete {id} {outcome:?}"),
    }
}
