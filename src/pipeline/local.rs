//! The local path, split in three stages so that they overlap on separate threads:
//! preprocess (resize, normalise), infer (the small network), postprocess (argmax, resize back).

use std::time::Instant;

use super::{PipelineError, PixelsDone};
use crate::decision::SmallHead;
use crate::frame::{Features, Job, MaskSource, Segmented};
use crossbeam_channel::{Receiver, Sender};

use crate::infer::{InferError, InputBuffer, Model, ModelManifest, NetworkOutput, Placement};

/// What the infer stage runs on: a preprocessed frame for the whole small network, or the
/// encoder output the decision stage computed, for the small network's head.
enum LocalInput {
    Frame(InputBuffer),
    Features(Features),
}

pub(super) struct Prepared {
    job: Job,
    input: LocalInput,
    placement: Placement,
}

pub(super) struct Inferred {
    job: Job,
    output: NetworkOutput,
    placement: Placement,
}

/// Input tensors go back from the infer stage to be refilled, so frames allocate none.
pub(super) fn spare_inputs(capacity: usize) -> (Sender<InputBuffer>, Receiver<InputBuffer>) {
    crossbeam_channel::bounded(capacity + 2)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// `takes_features`: the infer stage has the small network's head, so a frame that carries
/// the decision's encoder output skips preprocessing (and the encoder).
pub(super) fn preprocess(
    manifest: ModelManifest,
    spare: Receiver<InputBuffer>,
    pixels: PixelsDone,
    takes_features: bool,
) -> impl FnMut(Job) -> Result<Prepared, PipelineError> + Send + 'static {
    move |mut job| {
        let t = Instant::now();
        match job.features.take() {
            Some(features) if takes_features => {
                let placement = Placement::new(job.frame.width, job.frame.height, &manifest);
                pixels.done(&mut job.frame);
                return Ok(Prepared { job, input: LocalInput::Features(features), placement });
            }
            _ => {}
        }
        let mut input = spare.try_recv().unwrap_or_else(|_| InputBuffer::new(&manifest, 1));
        let image = input.image_mut(0).ok_or_else(|| InferError::Image { step: "preprocess", message: "empty input buffer".into() })?;
        let placement = crate::infer::preprocess(&job.frame.bgr, job.frame.width, job.frame.height, &manifest, image)?;
        job.latency_ms.insert("preprocess", ms_since(t));
        pixels.done(&mut job.frame);
        Ok(Prepared { job, input: LocalInput::Frame(input), placement })
    }
}

pub(super) fn infer(
    mut model: Model,
    mut head: Option<SmallHead>,
    spare: Sender<InputBuffer>,
) -> impl FnMut(Prepared) -> Result<Inferred, PipelineError> + Send + 'static {
    move |Prepared { mut job, input, placement }| {
        let t = Instant::now();
        let output = match (input, head.as_mut()) {
            (LocalInput::Frame(input), _) => {
                let output = model.run(&input)?;
                let _ = spare.try_send(input);
                output
            }
            (LocalInput::Features(features), Some(head)) => head.run(&features).map_err(Box::new)?,
            (LocalInput::Features(_), None) => unreachable!("features reach the infer stage only when it has the head"),
        };
        job.latency_ms.insert("infer", ms_since(t));
        Ok(Inferred { job, output, placement })
    }
}

pub(super) fn postprocess() -> impl FnMut(Inferred) -> Result<Segmented, PipelineError> + Send + 'static {
    |Inferred { mut job, output, placement }| {
        let t = Instant::now();
        let map = output.class_map(0, &placement)?;
        job.latency_ms.insert("postprocess", ms_since(t));
        let source = match job.fallback.take() {
            Some(reason) => MaskSource::Fallback { reason },
            None => MaskSource::Local,
        };
        Ok(job.into_segmented(map, source))
    }
}
