//! What every stage of a run shares: its own named thread, the run's first error, and the rule
//! that a stage which fails keeps draining so the frames behind it still come out.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::PipelineError;
use crate::shutdown::Shutdown;

/// Keeps the first error a stage hit and asks the run to stop taking new frames.
#[derive(Clone)]
pub(super) struct FirstError {
    slot: Arc<Mutex<Option<PipelineError>>>,
    shutdown: Shutdown,
}

impl FirstError {
    pub(super) fn new(shutdown: Shutdown) -> Self {
        FirstError { slot: Arc::default(), shutdown }
    }

    pub(super) fn set(&self, e: PipelineError) {
        tracing::error!(error = %e, "stage failed; finishing the frames already in the pipeline");
        self.slot.lock().expect("error slot lock").get_or_insert(e);
        self.shutdown.request();
    }

    pub(super) fn take(&self) -> Option<PipelineError> {
        self.slot.lock().expect("error slot lock").take()
    }
}

/// The threads of a run's stages, joined in the order they were started.
#[derive(Default)]
pub(super) struct Stages {
    threads: Vec<(&'static str, JoinHandle<()>)>,
}

impl Stages {
    /// A stage that helps the inference stage: it runs below it ([`crate::priority`]).
    pub(super) fn spawn(&mut self, name: &'static str, body: impl FnOnce() + Send + 'static) {
        self.spawn_ahead(name, move || {
            crate::priority::yield_to_inference();
            body()
        });
    }

    /// A stage at the process's own priority, never behind the helpers: the small network's,
    /// the decision stage (where the control unit reacts) and the remote stage (sending frames
    /// away is how a starved edge catches up, so it must not wait behind the local backlog).
    pub(super) fn spawn_ahead(&mut self, name: &'static str, body: impl FnOnce() + Send + 'static) {
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(body).expect("spawning a pipeline stage thread");
        self.threads.push((name, thread));
    }

    /// Waits for every stage; a panic is recorded as the run's error.
    pub(super) fn join(self, errors: &FirstError) {
        for (name, thread) in self.threads {
            if thread.join().is_err() {
                errors.set(PipelineError::Panicked(name));
            }
        }
    }
}

/// The body of a stage that turns each message into one for the next stage. A failure is
/// recorded and stops intake; the stage keeps draining so the frames behind it still come out.
/// It ends when its input closes (dropping its output, which closes the next stage's input).
pub(super) fn map_stage<I: Send + 'static, O: Send + 'static>(
    input: Receiver<I>,
    output: Sender<O>,
    errors: FirstError,
    mut transform: impl FnMut(I) -> Result<O, PipelineError> + Send + 'static,
) -> impl FnOnce() + Send + 'static {
    move || {
        for item in input {
            match transform(item) {
                Ok(out) => {
                    if output.send(out).is_err() {
                        break;
                    }
                }
                Err(e) => errors.set(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn a_failing_item_is_recorded_stops_intake_and_the_rest_still_flows() {
        let shutdown = Shutdown::new();
        let errors = FirstError::new(shutdown.clone());
        let (input_tx, input) = bounded(8);
        let (output, output_rx) = bounded(8);
        for n in 1..=4 {
            input_tx.send(n).unwrap();
        }
        drop(input_tx);
        let mut stages = Stages::default();
        stages.spawn(
            "double",
            map_stage(input, output, errors.clone(), |n: u32| if n == 2 { Err(PipelineError::Panicked("double")) } else { Ok(n * 2) }),
        );
        stages.join(&errors);
        assert_eq!(output_rx.iter().collect::<Vec<_>>(), [2, 6, 8]);
        assert!(matches!(errors.take(), Some(PipelineError::Panicked("double"))));
        assert!(shutdown.is_requested(), "the run is asked to stop taking frames");
    }

    #[test]
    fn a_panicking_stage_becomes_the_run_error() {
        let errors = FirstError::new(Shutdown::new());
        let mut stages = Stages::default();
        stages.spawn("fine", || {});
        stages.spawn("broken", || panic!("a bug"));
        stages.join(&errors);
        assert!(matches!(errors.take(), Some(PipelineError::Panicked("broken"))));
    }
}
