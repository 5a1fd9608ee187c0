//! GStreamer helpers shared by the stages that run GStreamer pipelines: frames come in through
//! one ([`crate::ingest`]) and the overlay video leaves through another ([`crate::sink`]).

use std::time::{Duration, Instant};

use gstreamer as gst;

/// Initialises GStreamer (cheap after the first call).
pub fn init() -> Result<(), gst::glib::Error> {
    gst::init()
}

/// For a bus's sync handler, which runs on the thread that posted the message: whether it is a
/// streaming thread announcing that it starts (decoders, encoders, queues), which then takes
/// its priority ([`crate::priority`]).
pub fn streaming_thread_entered(message: &gst::Message) -> bool {
    matches!(message.view(), gst::MessageView::StreamStatus(status) if status.get().0 == gst::StreamStatusType::Enter)
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
