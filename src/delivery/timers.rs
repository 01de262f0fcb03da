//! The scheduler's index of waiting messages by the time of their next attempt.
//!
//! Only the queue id and the time are kept: the envelope stays in the spool's
//! index and is read when the message is due, so a large deferred queue costs
//! a few dozen bytes per message here, and nothing is scanned while it waits.

use std::collections::{BTreeSet, HashMap};

/// Queue ids by next-attempt time (Unix seconds).
#[derive(Debug, Default)]
pub(super) struct Timers {
    by_time: BTreeSet<(i64, String)>,
    at: HashMap<String, i64>,
}

impl Timers {
    /// Schedules `id` at `time`, replacing its earlier time.
    pub(super) fn set(&mut self, id: &str, time: i64) {
        if let Some(old) = self.at.insert(id.to_string(), time) {
            self.by_time.remove(&(old, id.to_string()));
        }
        self.by_time.insert((time, id.to_string()));
    }

    /// Takes `id` out of the schedule; whether it was in it.
    pub(super) fn remove(&mut self, id: &str) -> bool {
        match self.at.remove(id) {
            Some(t) => self.by_time.remove(&(t, id.to_string())),
            None => false,
        }
    }

    /// The earliest id due at `now`, taken out of the schedule.
    pub(super) fn pop_due(&mut self, now: i64) -> Option<String> {
        let first = self.by_time.first()?;
        if first.0 > now {
            return None;
        }
        let (_, id) = self.by_time.pop_first()?;
        self.at.remove(&id);
        Some(id)
    }

    /// When the earliest waiting message is due.
    pub(super) fn next(&self) -> Option<i64> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Every scheduled id.
    pub(super) fn ids(&self) -> Vec<String> {
        self.at.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_in_time_order_and_rescheduled_once() {
        let mut t = Timers::default();
        t.set("c", 30);
        t.set("a", 10);
        t.set("b", 20);
        t.set("a", 25);
        assert_eq!(t.next(), Some(20));
        assert_eq!(t.pop_due(19), None);
        assert_eq!(t.pop_due(30).as_deref(), Some("b"));
        assert!(t.remove("c"));
        assert!(!t.remove("c"));
        assert_eq!(t.pop_due(30).as_deref(), Some("a"));
        assert_eq!((t.pop_due(100), t.next(), t.ids().len()), (None, None, 0));
    }
}
