//! GStreamer helpers shared by the stages that run GStreamer pipelines: frames come in through
//! one ([`crate::ingest`]) and the overlay video leaves through another ([`crate::sink`]).

use std::time::{Duration, Instant};

use gstreamer as gst;

/// Initialises GStreamer (cheap after the first call).
pub fn init() -> Result<(), gst::glib::Error> {
    gst::init()
}

/// For a bus's sync handler, which runs on the thread that posted the message: a streaming
/// thread announcing that it starts (decoders, encoders, queues) lowers itself below the
/// inference thread ([`crate::priority`]).
pub fn streaming_threads_yield_to_inference(message: &gst::Message) {
    if let gst::MessageView::StreamStatus(status) = message.view() {
        if status.get().0 == gst::StreamStatusType::Enter {
            crate::priority::yield_to_inference();
        }
    }
}

/// Pops the first message of one of `types` within `wait`, discarding others.
/// (gstreamer-rs 0.25's `timed_pop_filtered` never pops anything with a zero timeout.)
pub fn pop_message(bus: &gst::Bus, types: &[gst::MessageType], wait: Duration) -> Option<gst::Message> {
    let deadline = Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let msg = bus.timed_pop(gst::ClockTime::from_nseconds(remaining.as_nanos() as u64))?;
        if types.contains(&msg.type_()) {
            return Some(msg);
        }
    }
}
