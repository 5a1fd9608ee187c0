//! One way to ask a running part of edgeseg to stop, seen from threads and from async tasks.
//!
//! A [`Shutdown`] is requested once (by a signal, a test, or a failing stage) and observed
//! everywhere without polling: thread stages put [`Shutdown::requested`] in a crossbeam
//! `select!` (the channel is closed when shutdown is requested, so it is ready at once and
//! forever after), async code awaits [`Shutdown::cancelled`] (a tokio-util cancellation token).
//! Both are set by the same [`Shutdown::request`], so a stage never misses the request however
//! late it starts watching.

use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Nothing is ever sent on the channel: closing it is the message.
pub enum Never {}

/// A shutdown request shared by every clone.
#[derive(Clone)]
pub struct Shutdown {
    /// Dropped on request, which closes `closed` for every receiver.
    sender: Arc<Mutex<Option<Sender<Never>>>>,
    closed: Receiver<Never>,
    token: CancellationToken,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").field("requested", &self.is_requested()).finish()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (sender, closed) = crossbeam_channel::bounded(0);
        Shutdown { sender: Arc::new(Mutex::new(Some(sender))), closed, token: CancellationToken::new() }
    }

    /// Asks every holder to stop; asking again does nothing.
    pub fn request(&self) {
        self.sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        self.token.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Ready (disconnected) once shutdown is requested: `recv(shutdown.requested()) -> _ => ...`
    /// in a crossbeam `select!`.
    pub fn requested(&self) -> &Receiver<Never> {
        &self.closed
    }

    /// Completes once shutdown is requested.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Blocks the calling thread until shutdown is requested.
    pub fn wait(&self) {
        let _ = self.closed.recv();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_threads_and_tasks_started_before_and_after_it() {
        let shutdown = Shutdown::new();
        let early = {
            let s = shutdown.clone();
            std::thread::spawn(move || crossbeam_channel::select! { recv(s.requested()) -> _ => true })
        };
        assert!(!shutdown.is_requested());
        shutdown.clone().request();
        assert!(early.join().unwrap());
        // Watching after the request: ready at once, on both sides, however often.
        shutdown.wait();
        shutdown.wait();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(shutdown.cancelled());
        shutdown.request();
        assert!(shutdown.is_requested());
    }

    #[test]
    fn nothing_is_ready_before_a_request() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_requested());
        assert!(shutdown.requested().try_recv().is_err_and(|e| e.is_empty()));
    }
}
