//! How the worker forms batches across edge devices, as a state machine fed with requests and
//! the current time (tested on made-up time; the batching thread only waits until
//! [`BatchFormer::due`] and hands over what arrives).
//!
//! The first request of a batch waits at most `max_wait` for others; a batch runs as soon as it
//! has `max_batch` requests or its wait is over. Requests whose deadline passed while they
//! waited are set apart: the edge has used its local result, computing them is wasted work.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct BatchFormer<T> {
    max_batch: usize,
    max_wait: Duration,
    pending: Vec<(T, Instant)>,
    due: Option<Instant>,
}

/// A batch ready to run.
#[derive(Debug, PartialEq)]
pub struct Batch<T> {
    pub live: Vec<T>,
    /// Requests past their deadline, to be answered without computing them.
    pub expired: Vec<T>,
}

impl<T> BatchFormer<T> {
    pub fn new(max_batch: usize, max_wait: Duration) -> Self {
        BatchFormer { max_batch, max_wait, pending: Vec::new(), due: None }
    }

    /// Adds a request that arrived at `now` and is useless after `deadline`.
    pub fn push(&mut self, item: T, deadline: Instant, now: Instant) {
        self.due.get_or_insert(now + self.max_wait);
        self.pending.push((item, deadline));
    }

    /// When the batch being formed must run even if not full; `None` while nothing waits.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The batch, once it is full or due at `now`.
    pub fn take(&mut self, now: Instant) -> Option<Batch<T>> {
        let ready = self.pending.len() >= self.max_batch || self.due.is_some_and(|due| now >= due);
        if ready {
            self.flush(now)
        } else {
            None
        }
    }

    /// Whatever waits, ready or not (no more requests will come).
    pub fn flush(&mut self, now: Instant) -> Option<Batch<T>> {
        self.due = None;
        if self.pending.is_empty() {
            return None;
        }
        let (live, expired) = std::mem::take(&mut self.pending).into_iter().partition::<Vec<_>, _>(|(_, deadline)| *deadline > now);
        Some(Batch { live: live.into_iter().map(|(item, _)| item).collect(), expired: expired.into_iter().map(|(item, _)| item).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_batch_waits_for_company_until_due_then_runs_as_it_is() {
        let t0 = Instant::now();
        let mut former = BatchFormer::new(4, 5 * MS);
        assert_eq!(former.due(), None);
        former.push('a', t0 + 100 * MS, t0);
        former.push('b', t0 + 100 * MS, t0 + 2 * MS);
        assert_eq!(former.due(), Some(t0 + 5 * MS), "the first request starts the wait");
        assert_eq!(former.take(t0 + 4 * MS), None);
        assert_eq!(former.take(t0 + 5 * MS), Some(Batch { live: vec!['a', 'b'], expired: vec![] }));
        assert_eq!(former.due(), None);
        former.push('c', t0 + 100 * MS, t0 + 50 * MS);
        assert_eq!(former.due(), Some(t0 + 55 * MS), "the next batch waits from its own first request");
    }

    #[test]
    fn a_full_batch_runs_at_once() {
        let t0 = Instant::now();
        let mut former = BatchFormer::new(2, Duration::from_secs(1));
        former.push(1, t0 + MS, t0);
        assert_eq!(former.take(t0), None);
        former.push(2, t0 + MS, t0);
        assert_eq!(former.take(t0), Some(Batch { live: vec![1, 2], expired: vec![] }));
    }

    #[test]
    fn requests_past_their_deadline_are_set_apart() {
        let t0 = Instant::now();
        let mut former = BatchFormer::new(8, 10 * MS);
        former.push("late", t0 + 3 * MS, t0);
        former.push("on time", t0 + 30 * MS, t0 + MS);
        assert_eq!(former.take(t0 + 10 * MS), Some(Batch { live: vec!["on time"], expired: vec!["late"] }));
        assert_eq!(former.flush(t0 + 20 * MS), None, "nothing left");
        former.push("last", t0 + 30 * MS, t0 + 20 * MS);
        assert_eq!(former.flush(t0 + 21 * MS), Some(Batch { live: vec!["last"], expired: vec![] }), "flushed before due");
    }
}
