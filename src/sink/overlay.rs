//! The overlay video: blended frames pushed into a GStreamer `appsrc` pipeline that encodes them
//! to a file, so any installed encoder/muxer can be chosen in config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::SinkError;
use crate::gst_support::pop_message;

pub struct OverlayWriter {
    path: PathBuf,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    width: u32,
    height: u32,
    last_pts: Option<gst::ClockTime>,
    pushed: u64,
}

/// Frames without a timestamp (or with one that goes backwards) are spaced at this rate.
const FALLBACK_FRAME_NS: u64 = 33_333_333;

impl OverlayWriter {
    pub fn start(path: &Path, encoder: &str, width: u32, height: u32) -> Result<Self, SinkError> {
        let err = |message: String| SinkError::Overlay { path: path.to_path_buf(), message };
        crate::gst_support::init().map_err(|e| err(format!("GStreamer could not be initialised: {e}")))?;
        let location = path.to_string_lossy().replace('"', "\\\"");
        let description = format!("appsrc name=src ! {encoder} ! filesink location=\"{location}\"");
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| err(format!("output.overlay_encoder does not parse ({e}): {encoder}")))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| err("overlay description is not a pipeline".into()))?;
        let appsrc =
            pipeline.by_name("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok()).ok_or_else(|| err("appsrc missing".into()))?;
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "BGR")
            .field("width", width as i32)
            .field("height", height as i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        appsrc.set_caps(Some(&caps));
        appsrc.set_format(gst::Format::Time);
        // Back-pressure: the sink waits for the encoder rather than buffering frames (25 MB each
        // at 4K) that the pipeline's frame budget does not see; one waiting keeps the encoder busy.
        appsrc.set_block(true);
        appsrc.set_max_bytes(u64::from(width) * u64::from(height) * 3);
        if let Some(bus) = pipeline.bus() {
            bus.set_sync_handler(|_, message| {
                if crate::gst_support::streaming_thread_entered(message) {
                    crate::priority::yield_to_inference();
                }
                gst::BusSyncReply::Pass
            });
        }
        pipeline.set_state(gst::State::Playing).map_err(|e| err(format!("cannot start encoder: {e}")))?;
        Ok(OverlayWriter { path: path.to_path_buf(), pipeline, appsrc, width, height, last_pts: None, pushed: 0 })
    }

    /// Takes the blended frame by value: it becomes the GStreamer buffer without a copy.
    pub fn push(&mut self, bgr: Vec<u8>, width: u32, height: u32, pts: Option<Duration>) -> Result<(), SinkError> {
        let err = |message: String| SinkError::Overlay { path: self.path.clone(), message };
        if (width, height) != (self.width, self.height) {
            // The encoder's caps are fixed at the first frame; a size change mid-stream is skipped, not fatal.
            tracing::warn!(width, height, "frame size changed; overlay video keeps the first size and skips this frame");
            return Ok(());
        }
        if let Some(e) = self.bus_error() {
            return Err(err(e));
        }
        let mut pts = pts
            .map(|d| gst::ClockTime::from_nseconds(d.as_nanos() as u64))
            .unwrap_or_else(|| gst::ClockTime::from_nseconds(self.pushed * FALLBACK_FRAME_NS));
        if let Some(last) = self.last_pts {
            if pts <= last {
                pts = last + gst::ClockTime::from_nseconds(FALLBACK_FRAME_NS);
            }
        }
        let mut buffer = gst::Buffer::from_mut_slice(bgr);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(pts);
        }
        self.appsrc.push_buffer(buffer).map_err(|e| err(format!("encoder refused a frame: {e:?}")))?;
        self.last_pts = Some(pts);
        self.pushed += 1;
        Ok(())
    }

    fn bus_error(&self) -> Option<String> {
        let msg = pop_message(&self.pipeline.bus()?, &[gst::MessageType::Error], Duration::ZERO)?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(format!("{}: {}", e.src().map(|s| s.name().to_string()).unwrap_or_default(), e.error())),
            _ => None,
        }
    }

    /// Ends the stream and waits for the muxer to finalise the file (an MP4 without its index is unplayable).
    pub fn finish(self) -> Result<(), SinkError> {
        let err = |message: String| SinkError::Overlay { path: self.path.clone(), message };
        let _ = self.appsrc.end_of_stream();
        let result = match self.pipeline.bus() {
            Some(bus) => match pop_message(&bus, &[gst::MessageType::Eos, gst::MessageType::Error], Duration::from_secs(30)) {
                Some(msg) => match msg.view() {
                    gst::MessageView::Error(e) => Err(err(e.error().to_string())),
                    _ => Ok(()),
                },
                None => Err(err("encoder did not finish within 30 s".into())),
            },
            None => Ok(()),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }
}
