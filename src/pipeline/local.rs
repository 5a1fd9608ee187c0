//! The local path, split in three stages so that they overlap on separate threads:
//! preprocess (resize, normalise), infer (the small network), postprocess (argmax, resize back).

use std::time::Instant;

use super::PipelineError;
use crate::frame::{Job, MaskSource, Segmented};
use crate::infer::{Logits, Model, ModelManifest};

pub(super) struct Prepared {
    job: Job,
    tensor: Vec<f32>,
}

pub(super) struct Inferred {
    job: Job,
    logits: Logits,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub(super) fn preprocess(manifest: ModelManifest) -> impl FnMut(Job) -> Result<Prepared, PipelineError> + Send + 'static {
    move |mut job| {
        let t = Instant::now();
        let mut tensor = vec![0f32; manifest.input_len()];
        crate::infer::preprocess(&job.frame.bgr, job.frame.width, job.frame.height, &manifest, &mut tensor)?;
        job.latency_ms.insert("preprocess", ms_since(t));
        Ok(Prepared { job, tensor })
    }
}

pub(super) fn infer(mut model: Model) -> impl FnMut(Prepared) -> Result<Inferred, PipelineError> + Send + 'static {
    move |Prepared { mut job, tensor }| {
        let t = Instant::now();
        let logits = model.run(&tensor, 1)?;
        job.latency_ms.insert("infer", ms_since(t));
        Ok(Inferred { job, logits })
    }
}

pub(super) fn postprocess() -> impl FnMut(Inferred) -> Result<Segmented, PipelineError> + Send + 'static {
    |Inferred { mut job, logits }| {
        let t = Instant::now();
        let map = logits.class_map(0, job.frame.width, job.frame.height)?;
        job.latency_ms.insert("postprocess", ms_since(t));
        let source = match job.fallback.take() {
            Some(reason) => MaskSource::Fallback { reason },
            None => MaskSource::Local,
        };
        Ok(job.into_segmented(map, source))
    }
}
