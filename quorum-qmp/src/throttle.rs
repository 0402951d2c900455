//! QEMU's event rate limiting (SPEC R-QMP-3; `monitor/monitor.c`,
//! `monitor_qapi_event_queue_no_reenter`), as a state machine that is given
//! the time.
//!
//! Per key (the event's name, plus the `node-name` for
//! `QUORUM_REPORT_BAD`): the first event goes out at once and opens a
//! period; events during the period replace each other, and the last one
//! goes out when the period ends — opening another period. A period that
//! ends with nothing held closes, and the next event goes out at once
//! again. Events keep the timestamp they were made with, as QEMU's do.

use std::collections::HashMap;

/// How long a throttled event's period lasts, or `None`: not throttled.
/// QEMU limits both quorum events to one a second.
pub fn period_of(event: &str) -> Option<u64> {
    match event {
        "QUORUM_REPORT_BAD" | "QUORUM_FAILURE" => Some(1_000_000_000),
        _ => None,
    }
}

/// The throttling key of an event: its name, and for `QUORUM_REPORT_BAD`
/// the node it is about.
pub fn key_of(event: &str, node_name: Option<&str>) -> String {
    match (event, node_name) {
        ("QUORUM_REPORT_BAD", Some(n)) => format!("{event}\0{n}"),
        _ => event.to_string(),
    }
}

/// Open periods and what each holds; `T` is whatever is sent (a formatted
/// event line, say). Times are nanoseconds on any monotonic clock.
#[derive(Debug)]
pub struct Throttle<T> {
    open: HashMap<String, Period<T>>,
}

#[derive(Debug)]
struct Period<T> {
    ends: u64,
    length: u64,
    held: Option<T>,
}

impl<T> Default for Throttle<T> {
    fn default() -> Self {
        Throttle {
            open: HashMap::new(),
        }
    }
}

impl<T> Throttle<T> {
    /// No period open.
    pub fn new() -> Self {
        Self::default()
    }

    /// An event under `key`, throttled to one per `period` nanoseconds: it
    /// is returned if it goes out now, else held (replacing an event held
    /// before it, which is then never sent).
    pub fn offer(&mut self, key: String, period: u64, now: u64, event: T) -> Option<T> {
        match self.open.get_mut(&key) {
            Some(p) => {
                p.held = Some(event);
                None
            }
            None => {
                self.open.insert(
                    key,
                    Period {
                        ends: now.saturating_add(period),
                        length: period,
                        held: None,
                    },
                );
                Some(event)
            }
        }
    }

    /// When the earliest open period ends.
    pub fn deadline(&self) -> Option<u64> {
        self.open.values().map(|p| p.ends).min()
    }

    /// Ends the periods due by `now`: the events they held, in the order
    /// their periods ended. A period that held one starts again from `now`.
    pub fn expire(&mut self, now: u64) -> Vec<T> {
        let mut due: Vec<(u64, String)> = self
            .open
            .iter()
            .filter(|(_, p)| p.ends <= now)
            .map(|(k, p)| (p.ends, k.clone()))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, k) in due {
            let Some(p) = self.open.get_mut(&k) else {
                continue;
            };
            match p.held.take() {
                Some(e) => {
                    p.ends = now.saturating_add(p.length);
                    out.push(e);
                }
                None => {
                    self.open.remove(&k);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// R-QMP-3: the first at once, the last of the second when it ends,
    /// and every key on its own.
    #[test]
    fn r_qmp_3_first_at_once_last_at_the_end_of_the_second() {
        let mut t = Throttle::new();
        let k = || key_of("QUORUM_REPORT_BAD", Some("c1"));
        assert_eq!(t.offer(k(), S, 0, 1), Some(1));
        assert_eq!(t.offer(k(), S, 10, 2), None);
        assert_eq!(t.offer(k(), S, 20, 3), None);
        // Another node: its own key, at once.
        let other = key_of("QUORUM_REPORT_BAD", Some("c2"));
        assert_eq!(t.offer(other, S, 30, 10), Some(10));
        assert_eq!(t.deadline(), Some(S));
        assert_eq!(t.expire(S - 1), Vec::<i32>::new());
        // c1's period ends holding 3 (2 replaced); c2's ends empty.
        assert_eq!(t.expire(S + 30), vec![3]);
        assert_eq!(t.deadline(), Some(2 * S + 30));
        // c2 is quiet again: its next event goes out at once.
        assert_eq!(
            t.offer(key_of("QUORUM_REPORT_BAD", Some("c2")), S, S + 40, 11),
            Some(11)
        );
        // c1's new period ends with nothing held: closed.
        assert_eq!(t.expire(2 * S + 30), Vec::<i32>::new());
        assert_eq!(t.offer(k(), S, 2 * S + 31, 4), Some(4));
    }

    #[test]
    fn only_quorum_events_are_throttled_and_failure_has_one_key() {
        assert_eq!(period_of("QUORUM_FAILURE"), Some(S));
        assert_eq!(period_of("JOB_STATUS_CHANGE"), None);
        assert_eq!(
            key_of("QUORUM_FAILURE", Some("x")),
            key_of("QUORUM_FAILURE", None)
        );
        assert_ne!(
            key_of("QUORUM_REPORT_BAD", Some("a")),
            key_of("QUORUM_REPORT_BAD", Some("b"))
        );
    }
}
