//! The small network's thread comes first. On a small device the pipeline runs as fast as
//! inference only if decoding, pre- and post-processing and the outputs fit on the other
//! core(s) and step aside whenever the scheduler puts them on the inference thread's core.
//! Every other busy thread (the pipeline's stages, the sink, GStreamer's streaming threads)
//! therefore lowers its own priority: a higher nice value, allowed without privileges, and
//! weighed only against the threads of the same scheduling group (the session, or the
//! service's cgroup), so the process as a whole competes with others as before.
//!
//! Measured with `edgeseg bench pipeline` on `videos/vtest.avi` (768x576, overlay on) and the
//! real small network on a 2-core machine: pipeline / bare network 0.919 with every thread
//! equal, 0.983 with the inference thread ahead.

/// How far below the inference thread the other threads run, in nice steps: at +10 a thread
/// weighs about a tenth of one at +0 when both want the same core.
pub const HELPER_NICE: i32 = 10;

/// Lowers the calling thread to the process's own nice value + [`HELPER_NICE`] (at most 19).
/// Idempotent, so a thread that announces itself twice (GStreamer's thread pools) stays there.
pub fn yield_to_inference() {
    #[cfg(target_os = "linux")]
    // SAFETY: getpid, gettid, getpriority and setpriority only read and set scheduling
    // attributes of this process's own threads; no memory is passed.
    unsafe {
        // Linux keeps nice per thread; the main thread's (id = pid) is the process's own.
        let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        let target = (process + HELPER_NICE).min(19);
        let thread = libc::gettid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, thread, target) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a helper thread's priority");
        }
    }
}

/// The calling thread's nice value.
pub fn current_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: reads a scheduling attribute of the calling thread.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
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
}
