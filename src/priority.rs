//! The small network's thread comes first. On a small device the pipeline runs as fast as
//! inference only if decoding, pre- and post-processing and the outputs fit on the other
//! core(s) and step aside whenever the scheduler puts them on the inference thread's core.
//! Every other busy thread (the pipeline's stages, the sink, the overlay encoder, a replay's
//! decoder) therefore lowers its own priority: a higher nice value, allowed without
//! privileges, and weighed only against the threads of the same scheduling group (the session,
//! or the service's cgroup), so the process as a whole competes with others as before.
//!
//! Measured with `edgeseg bench pipeline` on `videos/vtest.avi` (768x576, overlay on) and the
//! real small network on a 2-core machine: pipeline / bare network 0.919 with every thread
//! equal, 0.983 with the inference thread ahead.
//!
//! Some threads keep the process's priority, because what they do cannot wait: a live source's
//! streaming threads (a camera's frames are lost when not taken, [`SourceThreads`]), the
//! decision stage, where the control unit reacts to the device's load, and the remote stage,
//! through which a starved device sheds its work. Starved behind the inference thread on a
//! device loaded by other work, they lost frames before any threshold could help, and frames
//! sent remote waited to be sent until their deadline passed, which the controller read as a
//! failing remote (README, "Control unit": the `bench control` steps).

/// How far below the inference thread the other threads run, in nice steps: at +10 a thread
/// weighs about a tenth of one at +0 when both want the same core.
pub const HELPER_NICE: i32 = 10;

/// Lowers the calling thread to the process's own nice value + [`HELPER_NICE`] (at most 19).
/// Idempotent, so a thread that announces itself twice (GStreamer's thread pools) stays there.
pub fn yield_to_inference() {
    #[cfg(target_os = "linux")]
    lower(current_thread());
}

/// Lowers thread `tid` of this process as [`yield_to_inference`] does.
#[cfg(target_os = "linux")]
fn lower(tid: libc::pid_t) {
    // SAFETY: getpid, getpriority and setpriority only read and set scheduling attributes of
    // this process's own threads; no memory is passed.
    unsafe {
        // Linux keeps nice per thread; the main thread's (id = pid) is the process's own.
        let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        let target = (process + HELPER_NICE).min(19);
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, target) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a helper thread's priority");
        }
    }
}

/// A source's streaming threads, which GStreamer starts before it says whether the source is
/// live. A live source (a camera) is the pipeline's front door: its frames come at its own rate
/// and are lost when not taken, so its threads keep the process's priority. A replay's decoder
/// can run ahead of the network and steps aside like any helper. Threads that enter before the
/// decision wait for it.
#[derive(Default)]
pub struct SourceThreads(std::sync::Mutex<SourceState>);

enum SourceState {
    Waiting(Vec<i32>),
    Decided { live: bool },
}

impl Default for SourceState {
    fn default() -> Self {
        SourceState::Waiting(Vec::new())
    }
}

impl SourceThreads {
    /// The calling thread is one of the source's streaming threads.
    pub fn entered(&self) {
        let mut state = self.0.lock().expect("source threads lock");
        match &mut *state {
            SourceState::Decided { live: true } => {}
            SourceState::Decided { live: false } => yield_to_inference(),
            SourceState::Waiting(threads) => threads.push(current_thread()),
        }
    }

    /// Says whether the source is live; the threads that entered so far follow.
    pub fn decide(&self, live: bool) {
        let mut state = self.0.lock().expect("source threads lock");
        if let SourceState::Waiting(threads) = std::mem::replace(&mut *state, SourceState::Decided { live }) {
            #[cfg(target_os = "linux")]
            if !live {
                threads.into_iter().for_each(lower);
            }
            #[cfg(not(target_os = "linux"))]
            drop(threads);
        }
    }
}

fn current_thread() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid only names the calling thread.
    unsafe {
        libc::gettid()
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The calling thread's nice value.
pub fn current_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: reads a scheduling attribute of the calling thread.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, current_thread() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_thread_runs_below_the_process_and_stays_there() {
        let process = current_nice();
        let helper = std::thread::spawn(|| {
            yield_to_inference();
            let once = current_nice();
            yield_to_inference();
            (once, current_nice())
        })
        .join()
        .unwrap();
        let expected = (process + HELPER_NICE).min(19);
        assert_eq!(helper, (expected, expected), "lowered once, not again");
        assert_eq!(current_nice(), process, "other threads keep their priority");
    }

    /// Threads that entered before the decision follow it, and so do those after it.
    fn source_threads_when(live: bool) -> (i32, i32) {
        let threads = std::sync::Arc::new(SourceThreads::default());
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (decided_tx, decided_rx) = std::sync::mpsc::channel::<()>();
        let early = {
            let threads = threads.clone();
            std::thread::spawn(move || {
                threads.entered();
                entered_tx.send(()).unwrap();
                decided_rx.recv().unwrap();
                current_nice()
            })
        };
        entered_rx.recv().unwrap();
        threads.decide(live);
        decided_tx.send(()).unwrap();
        let late = std::thread::spawn(move || {
            threads.entered();
            current_nice()
        });
        (early.join().unwrap(), late.join().unwrap())
    }

    #[test]
    fn a_live_source_keeps_its_threads_at_the_process_priority_and_a_replay_lowers_them() {
        let process = current_nice();
        assert_eq!(source_threads_when(true), (process, process));
        let lowered = (process + HELPER_NICE).min(19);
        assert_eq!(source_threads_when(false), (lowered, lowered));
    }
}
