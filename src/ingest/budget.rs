//! The pipeline-wide bound on the memory held by frames in flight, counted in bytes.
//!
//! Queue capacities bound frames per queue, not memory: at 3840x2160 one BGR frame is 25 MB
//! and every queue and stage holding one multiplied that. The budget sits across the whole
//! pipeline instead: the ingest reserves a frame's bytes before it allocates the frame (so a
//! replay waits there, where waiting costs nothing), and the bytes come back when the frame's
//! memory goes away: its pixels once nothing downstream needs them, the rest when the sink is
//! done with it. A live source never waits on it: it drops frames instead (see [`crate::ingest`]).
//!
//! What a frame holds is counted by one rule, [`FrameBudget::frame_bytes`]: its BGR pixels and
//! the class map it will get, both at frame size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};

use crate::frame::Frame;
use crate::shutdown::Shutdown;

/// Shared by every clone: the ingest reserves, whoever lets go of a frame's memory releases.
#[derive(Clone, Debug)]
pub struct FrameBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: u64,
    in_flight: AtomicU64,
    peak: AtomicU64,
    /// One pending nudge per release is enough: a waiting reserver re-reads `in_flight`.
    released: Sender<()>,
    wake: Receiver<()>,
}

impl FrameBudget {
    pub fn new(limit_bytes: u64) -> Self {
        let (released, wake) = crossbeam_channel::bounded(1);
        FrameBudget { inner: Arc::new(Inner { limit: limit_bytes, in_flight: AtomicU64::new(0), peak: AtomicU64::new(0), released, wake }) }
    }

    /// No bound (collecting frames into memory on purpose, tests of other things).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// What a `width` x `height` frame holds while in flight: BGR pixels and a class map.
    pub fn frame_bytes(width: u32, height: u32) -> u64 {
        u64::from(width) * u64::from(height) * 4
    }

    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// The most bytes ever in flight at once.
    pub fn peak(&self) -> u64 {
        self.inner.peak.load(Ordering::Acquire)
    }

    /// Reserves `bytes` if they fit. With nothing in flight anything fits, so a frame larger
    /// than the whole budget still passes, alone.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let limit = self.inner.limit;
        let reserved = self.inner.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current == 0 || current.saturating_add(bytes) <= limit).then(|| current.saturating_add(bytes))
        });
        match reserved {
            Ok(before) => {
                self.inner.peak.fetch_max(before.saturating_add(bytes), Ordering::AcqRel);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until `bytes` fit; `false` if `shutdown` was requested first.
    pub fn reserve(&self, bytes: u64, shutdown: &Shutdown) -> bool {
        loop {
            if self.try_reserve(bytes) {
                return true;
            }
            select! {
                recv(self.inner.wake) -> _ => {}
                recv(shutdown.requested()) -> _ => return false,
            }
        }
    }

    pub fn release(&self, bytes: u64) {
        let _ = self.inner.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| Some(current.saturating_sub(bytes)));
        let _ = self.inner.released.try_send(());
    }

    /// Frees the frame's pixels now (nothing downstream needs them) and returns their bytes;
    /// the frame keeps its size and timestamps.
    pub fn drop_pixels(&self, frame: &mut Frame) {
        let pixels = std::mem::take(&mut frame.bgr);
        self.release(pixels.len() as u64);
    }

    /// Returns what `frame` still holds (its pixels unless dropped, and its class map): the
    /// frame is leaving the pipeline.
    pub fn release_frame(&self, frame: &Frame) {
        self.release(frame.bgr.len() as u64 + u64::from(frame.width) * u64::from(frame.height));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn frame(width: u32, height: u32) -> Frame {
        Frame { seq: 0, pts: None, width, height, bgr: vec![0; (width * height * 3) as usize], captured_at: Instant::now() }
    }

    #[test]
    fn a_frame_reserves_pixels_and_class_map_and_gives_both_back() {
        let budget = FrameBudget::new(1000);
        let mut f = frame(10, 10);
        assert!(budget.try_reserve(FrameBudget::frame_bytes(f.width, f.height)));
        assert_eq!(budget.in_flight(), 400);
        budget.drop_pixels(&mut f);
        assert!(f.bgr.is_empty());
        assert_eq!(budget.in_flight(), 100, "the class map is still to come");
        budget.release_frame(&f);
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(budget.peak(), 400);
    }

    #[test]
    fn what_does_not_fit_waits_and_one_oversized_frame_passes_alone() {
        let budget = FrameBudget::new(500);
        assert!(budget.try_reserve(400));
        assert!(!budget.try_reserve(200), "400 + 200 is over 500");
        budget.release(400);
        assert!(budget.try_reserve(2000), "nothing in flight: a frame over the budget passes alone");
        assert!(!budget.try_reserve(1));
        assert_eq!(budget.peak(), 2000);
    }

    #[test]
    fn a_waiting_reserve_wakes_on_release_or_shutdown() {
        let budget = FrameBudget::new(100);
        assert!(budget.try_reserve(100));
        let shutdown = Shutdown::new();
        let waiter = {
            let (budget, shutdown) = (budget.clone(), shutdown.clone());
            std::thread::spawn(move || budget.reserve(60, &shutdown))
        };
        budget.release(100);
        assert!(waiter.join().unwrap(), "released bytes let the waiter in");
        assert_eq!(budget.in_flight(), 60);

        assert!(budget.try_reserve(40));
        let waiter = {
            let (budget, shutdown) = (budget.clone(), shutdown.clone());
            std::thread::spawn(move || budget.reserve(60, &shutdown))
        };
        shutdown.request();
        assert!(!waiter.join().unwrap(), "a stop request ends the wait without reserving");
        assert_eq!(budget.in_flight(), 100);
    }
}
