//! Wire format between edge devices and the remote segmentation worker.
//!
//! Sans-IO, as quinn-proto does it: this module only turns typed messages into bytes and bytes
//! into typed messages, so encoding, decoding and every limit can be unit-tested and fuzzed
//! without sockets. The QUIC client and worker (one bidirectional stream per frame) and the
//! plain TCP benchmark baseline only move the bytes.
//!
//! Bytes leave through [`encode_request`] / [`encode_response`], which append a length-prefixed
//! message to a buffer. Bytes enter in two steps: the reader passes the 4-byte prefix to
//! [`body_length`] (or feeds a stream to [`FrameSplitter`]), which checks the size against
//! [`Limits`] *before* anything is allocated, then hands the body to [`decode_request`] /
//! [`decode_response`].
//!
//! # Layout
//!
//! ```text
//! message  : body_len u32 | body
//! body     : magic "ES" | version u8 | kind u8 (1 = request, 2 = response) | fields
//! request  : frame_id u64 | deadline_ms u32 | model_len u8 | model (UTF-8)
//!            | width u32 | height u32 | encoding u8 | image_len u32 | image
//! response : frame_id u64 | status u8 (1 = mask, 2 = error) | then one of
//!   mask   :   width u32 | height u32 | queue_us u32 | inference_us u32 | batch_size u16
//!              | rle_len u32 | rle = (class_id u8, run_length LEB128)*
//!   error  :   code u8 | message_len u16 | message (UTF-8)
//! ```
//!
//! All integers are big-endian. Decoding is strict: unknown enum values, trailing bytes,
//! zero-length or non-maximal runs and over-long varints are rejected, so every accepted body is
//! exactly what [`encode_request`] / [`encode_response`] would produce for the decoded value.
//! The fuzz target relies on that to check round trips on arbitrary input.

use thiserror::Error;

/// First bytes of every body, so a peer speaking something else fails fast and clearly.
pub const MAGIC: [u8; 2] = *b"ES";
/// Bumped on any layout change; edge and worker must agree exactly.
pub const VERSION: u8 = 1;
/// Every message starts with the body length as a big-endian `u32`.
pub const LENGTH_PREFIX_BYTES: usize = 4;

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const STATUS_MASK: u8 = 1;
const STATUS_ERROR: u8 = 2;
const BGR8_BYTES_PER_PIXEL: u64 = 3;
/// A `u64` needs at most ten 7-bit LEB128 groups.
const MAX_VARINT_BYTES: usize = 10;

/// Receiver-side bounds on what a peer may make us read and allocate.
///
/// They are the receiver's policy, so only the decoders enforce them; the encoders reject what is
/// invalid for every receiver (zero dimensions, sizes that disagree, fields that overflow the
/// wire widths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, checked on the length prefix before the body is read. The default
    /// 16 MiB fits a 4096×4096 JPEG; raw BGR8 frames must be smaller than that.
    pub max_message_bytes: usize,
    /// Together with `max_height`, bounds the decoded class map (`width × height` bytes), which
    /// run-length encoding can make far larger than the message itself.
    pub max_width: u32,
    pub max_height: u32,
    /// Model names are short identifiers; the wire format caps them at 255 bytes anyway.
    pub max_model_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_message_bytes: 16 << 20, max_width: 4096, max_height: 4096, max_model_name_bytes: 64 }
    }
}

/// How the request's image bytes are to be interpreted.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEncoding {
    /// Compressed frame; the usual choice over real links.
    Jpeg = 1,
    /// `width × height × 3` bytes, row-major BGR: no codec cost, for fast links and benchmarks.
    RawBgr8 = 2,
}

impl TryFrom<u8> for ImageEncoding {
    type Error = ProtoError;

    fn try_from(value: u8) -> Result<Self, ProtoError> {
        match value {
            1 => Ok(Self::Jpeg),
            2 => Ok(Self::RawBgr8),
            other => Err(ProtoError::UnknownImageEncoding(other)),
        }
    }
}

/// One hard frame that the edge asks the worker to segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the response so the edge can match answers to frames.
    pub frame_id: u64,
    /// Remaining time budget relative to when the edge sent the request: absolute clocks differ
    /// between machines, so the worker starts its own timer on receipt.
    pub deadline_ms: u32,
    /// Which remote network to run, as named in the worker's config.
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub encoding: ImageEncoding,
    pub image: Vec<u8>,
}

/// Why the worker did not return a mask; lets the edge decide between retrying and falling back
/// to its local result.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The worker's queue is full; send fewer frames or fall back locally.
    Overloaded = 1,
    /// The deadline ran out before inference finished; the answer would be useless.
    DeadlineExceeded = 2,
    /// The worker has no model of that name.
    UnknownModel = 3,
    /// The request was well-formed on the wire but unusable (for example a corrupt JPEG).
    BadRequest = 4,
    /// Something failed inside the worker; the message says what.
    Internal = 5,
    /// The worker could not decode the request at all.
    Protocol = 6,
}

impl TryFrom<u8> for ErrorCode {
    type Error = ProtoError;

    fn try_from(value: u8) -> Result<Self, ProtoError> {
        match value {
            1 => Ok(Self::Overloaded),
            2 => Ok(Self::DeadlineExceeded),
            3 => Ok(Self::UnknownModel),
            4 => Ok(Self::BadRequest),
            5 => Ok(Self::Internal),
            6 => Ok(Self::Protocol),
            other => Err(ProtoError::UnknownErrorCode(other)),
        }
    }
}

/// The segmentation of one frame, plus the worker-side timings the edge needs to tell network
/// latency from queueing and inference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskResult {
    pub width: u32,
    pub height: u32,
    /// `width × height` class ids, row-major, already decoded (run-length coding is wire-only).
    pub class_map: Vec<u8>,
    /// Time the request waited in the worker's queue.
    pub queue_us: u32,
    /// Time the batch containing this frame spent in the network.
    pub inference_us: u32,
    /// How many frames shared that batch, to explain `inference_us`.
    pub batch_size: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    Mask(MaskResult),
    Error { code: ErrorCode, message: String },
}

/// The worker's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub frame_id: u64,
    pub body: ResponseBody,
}

/// Everything that can be wrong with a message, on either side.
///
/// `Clone` so that [`FrameSplitter`] can keep reporting the error that broke a stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error(
        "message truncated in {field}: needs {needed} bytes but only {available} remain; \
         the peer closed early or its length prefix is wrong"
    )]
    Truncated { field: &'static str, needed: usize, available: usize },
    #[error("bad magic {got:02x?} (expected \"ES\"); the peer is not speaking the edgeseg protocol")]
    BadMagic { got: [u8; 2] },
    #[error(
        "protocol version {got} is not supported (this build speaks {supported}); \
         deploy matching edge and worker versions"
    )]
    UnsupportedVersion { got: u8, supported: u8 },
    #[error("unknown message kind {0}; expected 1 (request) or 2 (response)")]
    UnknownMessageKind(u8),
    #[error("expected a {expected} but got a {got}; check which side decodes which message")]
    WrongMessageKind { expected: &'static str, got: &'static str },
    #[error("unknown image encoding {0}; expected 1 (JPEG) or 2 (raw BGR8)")]
    UnknownImageEncoding(u8),
    #[error("unknown error code {0}; the worker may be newer than this edge build")]
    UnknownErrorCode(u8),
    #[error("unknown response status {0}; expected 1 (mask) or 2 (error)")]
    UnknownResponseStatus(u8),
    #[error("{what} is {size} bytes, over the limit of {limit}; send less or raise the limit")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    #[error(
        "{width}x{height} exceeds the limit of {max_width}x{max_height}; \
         downscale before sending or raise the limit"
    )]
    DimensionsTooLarge { width: u32, height: u32, max_width: u32, max_height: u32 },
    #[error("width and height must both be non-zero")]
    ZeroDimensions,
    #[error("image is empty; there is nothing to segment")]
    EmptyImage,
    #[error("raw BGR8 image has {actual} bytes but {width}x{height}x3 is {expected}")]
    ImageSizeMismatch { width: u32, height: u32, expected: u64, actual: usize },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("class map covers {decoded} pixels but width x height is {expected}")]
    ClassMapSizeMismatch { expected: u64, decoded: u64 },
    #[error("{0} bytes left over after a complete message; the length prefix and the body disagree")]
    TrailingBytes(usize),
    #[error("bad run-length class map at byte {offset}: {reason}")]
    BadRle { offset: usize, reason: &'static str },
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends the length prefix and body of `req` to `out`; on error `out` is left as it was.
pub fn encode_request(req: &Request, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    check_image(req.width, req.height, req.encoding, req.image.len())?;
    let model_len = wire_len(req.model.len(), u8::MAX, "model name")?;
    let image_len = wire_len(req.image.len(), u32::MAX, "image")?;
    encode_framed(out, |body| {
        write_header(body, KIND_REQUEST);
        body.extend_from_slice(&req.frame_id.to_be_bytes());
        body.extend_from_slice(&req.deadline_ms.to_be_bytes());
        body.push(model_len);
        body.extend_from_slice(req.model.as_bytes());
        body.extend_from_slice(&req.width.to_be_bytes());
        body.extend_from_slice(&req.height.to_be_bytes());
        body.push(req.encoding as u8);
        body.extend_from_slice(&image_len.to_be_bytes());
        body.extend_from_slice(&req.image);
        Ok(())
    })
}

/// Appends the length prefix and body of `resp` to `out`; on error `out` is left as it was.
pub fn encode_response(resp: &Response, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    if let ResponseBody::Mask(mask) = &resp.body {
        let expected = pixel_count(mask.width, mask.height)?;
        let decoded = mask.class_map.len() as u64;
        if decoded != expected {
            return Err(ProtoError::ClassMapSizeMismatch { expected, decoded });
        }
    }
    encode_framed(out, |body| {
        write_header(body, KIND_RESPONSE);
        body.extend_from_slice(&resp.frame_id.to_be_bytes());
        match &resp.body {
            ResponseBody::Mask(mask) => {
                body.push(STATUS_MASK);
                body.extend_from_slice(&mask.width.to_be_bytes());
                body.extend_from_slice(&mask.height.to_be_bytes());
                body.extend_from_slice(&mask.queue_us.to_be_bytes());
                body.extend_from_slice(&mask.inference_us.to_be_bytes());
                body.extend_from_slice(&mask.batch_size.to_be_bytes());
                // The encoded size is only known afterwards, so reserve the field and patch it.
                let len_at = body.len();
                body.extend_from_slice(&[0; 4]);
                rle_encode(&mask.class_map, body);
                let rle_len = wire_len(body.len() - len_at - 4, u32::MAX, "run-length class map")?;
                body[len_at..len_at + 4].copy_from_slice(&rle_len.to_be_bytes());
            }
            ResponseBody::Error { code, message } => {
                let message_len = wire_len(message.len(), u16::MAX, "error message")?;
                body.push(STATUS_ERROR);
                body.push(*code as u8);
                body.extend_from_slice(&message_len.to_be_bytes());
                body.extend_from_slice(message.as_bytes());
            }
        }
        Ok(())
    })
}

/// Writes a placeholder prefix, the body, then the real prefix; rolls `out` back on error so a
/// failed encode never leaves half a message in a send buffer.
fn encode_framed(out: &mut Vec<u8>, write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), ProtoError>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    let result = write_body(out).and_then(|()| {
        let body_len = out.len() - start - LENGTH_PREFIX_BYTES;
        let prefix = wire_len(body_len, u32::MAX, "message body")?;
        out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_header(body: &mut Vec<u8>, kind: u8) {
    body.extend_from_slice(&MAGIC);
    body.push(VERSION);
    body.push(kind);
}

/// Converts a length to its field's wire width, or says which field does not fit.
fn wire_len<T: TryFrom<usize> + Into<u64>>(len: usize, max: T, what: &'static str) -> Result<T, ProtoError> {
    T::try_from(len).map_err(|_| ProtoError::TooLarge { what, size: len, limit: usize::try_from(max.into()).unwrap_or(usize::MAX) })
}

/// Rejects dimensions and image sizes that no receiver could accept.
fn check_image(width: u32, height: u32, encoding: ImageEncoding, image_len: usize) -> Result<(), ProtoError> {
    let pixels = pixel_count(width, height)?;
    match encoding {
        ImageEncoding::Jpeg if image_len == 0 => Err(ProtoError::EmptyImage),
        ImageEncoding::Jpeg => Ok(()),
        ImageEncoding::RawBgr8 => {
            let expected = pixels * BGR8_BYTES_PER_PIXEL;
            if image_len as u64 == expected {
                Ok(())
            } else {
                Err(ProtoError::ImageSizeMismatch { width, height, expected, actual: image_len })
            }
        }
    }
}

/// `width × height`, which cannot overflow `u64`; zero is never a valid frame.
fn pixel_count(width: u32, height: u32) -> Result<u64, ProtoError> {
    if width == 0 || height == 0 {
        return Err(ProtoError::ZeroDimensions);
    }
    Ok(u64::from(width) * u64::from(height))
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads the body length from a message's prefix and rejects it if it exceeds
/// `limits.max_message_bytes`, so a peer cannot make the reader allocate more than that.
pub fn body_length(prefix: [u8; LENGTH_PREFIX_BYTES], limits: &Limits) -> Result<usize, ProtoError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > limits.max_message_bytes {
        return Err(ProtoError::TooLarge { what: "message body", size: len, limit: limits.max_message_bytes });
    }
    Ok(len)
}

/// Decodes a request body (the bytes after the length prefix).
pub fn decode_request(body: &[u8], limits: &Limits) -> Result<Request, ProtoError> {
    let mut reader = Reader::new(body, limits)?;
    reader.header(KIND_REQUEST)?;
    let frame_id = reader.u64("frame_id")?;
    let deadline_ms = reader.u32("deadline_ms")?;
    let model_len = usize::from(reader.u8("model name length")?);
    if model_len > limits.max_model_name_bytes {
        return Err(ProtoError::TooLarge { what: "model name", size: model_len, limit: limits.max_model_name_bytes });
    }
    let model = reader.utf8(model_len, "model name")?;
    let (width, height) = reader.dimensions(limits)?;
    let encoding = ImageEncoding::try_from(reader.u8("image encoding")?)?;
    let image_len = reader.length_u32("image length")?;
    let image = reader.take(image_len, "image")?;
    reader.finish()?;
    // Validated before copying, so a bad request costs no allocation.
    check_image(width, height, encoding, image.len())?;
    Ok(Request { frame_id, deadline_ms, model, width, height, encoding, image: image.to_vec() })
}

/// Decodes a response body (the bytes after the length prefix).
pub fn decode_response(body: &[u8], limits: &Limits) -> Result<Response, ProtoError> {
    let mut reader = Reader::new(body, limits)?;
    reader.header(KIND_RESPONSE)?;
    let frame_id = reader.u64("frame_id")?;
    let body = match reader.u8("response status")? {
        STATUS_MASK => {
            let (width, height) = reader.dimensions(limits)?;
            let queue_us = reader.u32("queue_us")?;
            let inference_us = reader.u32("inference_us")?;
            let batch_size = reader.u16("batch_size")?;
            let rle_len = reader.length_u32("run-length class map length")?;
            let rle = reader.take(rle_len, "run-length class map")?;
            reader.finish()?;
            // dimensions() bounded width × height by the limits, so the map fits in memory.
            let pixels = pixel_count(width, height)?;
            let expected_len = usize::try_from(pixels).map_err(|_| ProtoError::DimensionsTooLarge {
                width,
                height,
                max_width: limits.max_width,
                max_height: limits.max_height,
            })?;
            let mut class_map = Vec::new();
            rle_decode(rle, expected_len, &mut class_map)?;
            ResponseBody::Mask(MaskResult { width, height, class_map, queue_us, inference_us, batch_size })
        }
        STATUS_ERROR => {
            let code = ErrorCode::try_from(reader.u8("error code")?)?;
            let message_len = usize::from(reader.u16("error message length")?);
            let message = reader.utf8(message_len, "error message")?;
            reader.finish()?;
            ResponseBody::Error { code, message }
        }
        other => return Err(ProtoError::UnknownResponseStatus(other)),
    };
    Ok(Response { frame_id, body })
}

/// Cursor over a body. Every read checks the remaining length first, so declared lengths can
/// never cause an out-of-bounds read or an allocation beyond the body itself.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8], limits: &Limits) -> Result<Self, ProtoError> {
        if body.len() > limits.max_message_bytes {
            return Err(ProtoError::TooLarge { what: "message body", size: body.len(), limit: limits.max_message_bytes });
        }
        Ok(Self { rest: body })
    }

    fn header(&mut self, expected_kind: u8) -> Result<(), ProtoError> {
        let magic = self.array::<2>("magic")?;
        if magic != MAGIC {
            return Err(ProtoError::BadMagic { got: magic });
        }
        let version = self.u8("version")?;
        if version != VERSION {
            return Err(ProtoError::UnsupportedVersion { got: version, supported: VERSION });
        }
        let kind_name = |kind| {
            if kind == KIND_REQUEST {
                "request"
            } else {
                "response"
            }
        };
        match self.u8("message kind")? {
            kind if kind == expected_kind => Ok(()),
            kind @ (KIND_REQUEST | KIND_RESPONSE) => {
                Err(ProtoError::WrongMessageKind { expected: kind_name(expected_kind), got: kind_name(kind) })
            }
            other => Err(ProtoError::UnknownMessageKind(other)),
        }
    }

    fn dimensions(&mut self, limits: &Limits) -> Result<(u32, u32), ProtoError> {
        let width = self.u32("width")?;
        let height = self.u32("height")?;
        if width == 0 || height == 0 {
            return Err(ProtoError::ZeroDimensions);
        }
        if width > limits.max_width || height > limits.max_height {
            return Err(ProtoError::DimensionsTooLarge { width, height, max_width: limits.max_width, max_height: limits.max_height });
        }
        Ok((width, height))
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        if len > self.rest.len() {
            return Err(ProtoError::Truncated { field, needed: len, available: self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        let (head, tail) =
            self.rest.split_first_chunk::<N>().ok_or(ProtoError::Truncated { field, needed: N, available: self.rest.len() })?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        self.array::<1>(field).map(|[byte]| byte)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn length_u32(&mut self, field: &'static str) -> Result<usize, ProtoError> {
        // On 16-bit targets a length that does not fit usize cannot fit the body either, and
        // take() then reports it as truncated.
        self.u32(field).map(|len| usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn utf8(&mut self, len: usize, field: &'static str) -> Result<String, ProtoError> {
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| ProtoError::InvalidUtf8 { field })
    }

    fn finish(self) -> Result<(), ProtoError> {
        match self.rest.len() {
            0 => Ok(()),
            left => Err(ProtoError::TrailingBytes(left)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Run-length coding of class maps

/// Appends the run-length encoding of `class_map`: one `(class_id u8, run_length LEB128)` pair
/// per maximal run. Segmentation maps are mostly large uniform regions, so this is typically a
/// few bytes per row instead of one byte per pixel.
pub fn rle_encode(class_map: &[u8], out: &mut Vec<u8>) {
    let mut rest = class_map;
    while let Some(&class_id) = rest.first() {
        let run = run_length(rest, class_id);
        out.push(class_id);
        write_varint(out, run as u64);
        rest = &rest[run..];
    }
}

/// How many leading bytes of `bytes` equal `class_id`. Masks are mostly long runs (a worker
/// encodes a full-resolution mask per frame), so this compares eight bytes at a time.
fn run_length(bytes: &[u8], class_id: u8) -> usize {
    let splat = u64::from_ne_bytes([class_id; 8]);
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks_exact yields 8 bytes"));
        let differs = word ^ splat;
        if differs != 0 {
            // The first differing byte in memory order.
            let index = if cfg!(target_endian = "little") { differs.trailing_zeros() } else { differs.leading_zeros() } / 8;
            return run + index as usize;
        }
        run += 8;
    }
    run + bytes[run..].iter().take_while(|&&c| c == class_id).count()
}

/// Appends exactly `expected_len` decoded class ids to `out`, or returns an error and leaves
/// `out` untouched.
///
/// The data is validated in a first pass that allocates nothing, so garbage cannot make us
/// allocate `expected_len` bytes; only well-formed data of the right size is expanded.
pub fn rle_decode(data: &[u8], expected_len: usize, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let mut decoded: u64 = 0;
    for_each_run(data, |_, run| decoded = decoded.saturating_add(run))?;
    let expected = expected_len as u64;
    if decoded != expected {
        return Err(ProtoError::ClassMapSizeMismatch { expected, decoded });
    }
    out.reserve(expected_len);
    // Every run is at most the total, which equals expected_len, so `as usize` is lossless.
    for_each_run(data, |class_id, run| out.resize(out.len() + run as usize, class_id))
}

/// Walks the `(class_id, run_length)` pairs, rejecting anything [`rle_encode`] would not emit:
/// zero runs, runs that continue the previous class, and over-long varints. That keeps the
/// encoding canonical (one byte string per class map), which the round-trip fuzzing relies on.
fn for_each_run(data: &[u8], mut visit: impl FnMut(u8, u64)) -> Result<(), ProtoError> {
    let mut offset = 0;
    let mut previous_class = None;
    while let Some((&class_id, rest)) = data.get(offset..).and_then(<[u8]>::split_first) {
        let (run, varint_len) = read_varint(rest).map_err(|reason| ProtoError::BadRle { offset: offset + 1, reason })?;
        if run == 0 {
            return Err(ProtoError::BadRle { offset, reason: "run of length zero" });
        }
        if previous_class == Some(class_id) {
            return Err(ProtoError::BadRle { offset, reason: "run continues the previous class; runs must be maximal" });
        }
        previous_class = Some(class_id);
        visit(class_id, run);
        offset += 1 + varint_len;
    }
    Ok(())
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one LEB128 `u64`, returning it and the bytes it used.
fn read_varint(data: &[u8]) -> Result<(u64, usize), &'static str> {
    let mut value = 0u64;
    for (index, &byte) in data.iter().take(MAX_VARINT_BYTES).enumerate() {
        let group = u64::from(byte & 0x7f);
        if index == MAX_VARINT_BYTES - 1 && group > 1 {
            return Err("run length overflows 64 bits");
        }
        value |= group << (7 * index);
        if byte & 0x80 == 0 {
            if byte == 0 && index > 0 {
                return Err("run length has redundant zero groups");
            }
            return Ok((value, index + 1));
        }
    }
    if data.len() >= MAX_VARINT_BYTES {
        Err("run length is longer than 10 bytes")
    } else {
        Err("run length is cut off")
    }
}

// ---------------------------------------------------------------------------------------------
// Stream framing

/// Incremental splitter for byte streams (TCP baseline, partial reads): push bytes as they
/// arrive, pop complete bodies.
///
/// Each length prefix is checked against the limits as soon as its four bytes are in, before
/// waiting for (or allocating) the body. After a framing error the stream position is lost, so
/// the splitter drops its buffer, ignores further input and keeps returning that error.
#[derive(Debug)]
pub struct FrameSplitter {
    limits: Limits,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already handed out. Compacted lazily, so that popping many
    /// small bodies from one large read stays linear.
    consumed: usize,
    failed: Option<ProtoError>,
}

impl FrameSplitter {
    pub fn new(limits: Limits) -> Self {
        Self { limits, buffer: Vec::new(), consumed: 0, failed: None }
    }

    /// Buffers `bytes`. Call [`next_body`](Self::next_body) until it returns `Ok(None)` after
    /// each push, so the buffer never holds more than one incomplete message plus one read.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.consumed > 0 && self.consumed >= self.buffer.len() / 2 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete body (without its prefix), `Ok(None)` if more bytes are needed.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, ProtoError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let pending = &self.buffer[self.consumed..];
        let Some((prefix, rest)) = pending.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let body_len = match body_length(*prefix, &self.limits) {
            Ok(len) => len,
            Err(error) => {
                self.buffer = Vec::new();
                self.consumed = 0;
                self.failed = Some(error.clone());
                return Err(error);
            }
        };
        let Some(body) = rest.get(..body_len) else {
            return Ok(None);
        };
        let body = body.to_vec();
        self.consumed += LENGTH_PREFIX_BYTES + body_len;
        if self.consumed == self.buffer.len() {
            self.buffer.clear();
            self.consumed = 0;
        }
        Ok(Some(body))
    }

    /// Bytes received but not yet returned; non-zero at end of stream means the peer stopped
    /// mid-message.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jpeg_request() -> Request {
        Request {
            frame_id: 42,
            deadline_ms: 150,
            model: "m".to_owned(),
            width: 64,
            height: 48,
            encoding: ImageEncoding::Jpeg,
            image: vec![0xff, 0xd8, 0xff, 0xe0, 1, 2, 3],
        }
    }

    fn raw_request() -> Request {
        Request {
            frame_id: 7,
            deadline_ms: 0,
            model: "deeplab".to_owned(),
            width: 2,
            height: 2,
            encoding: ImageEncoding::RawBgr8,
            image: (0..12).collect(),
        }
    }

    fn mask_response() -> Response {
        Response {
            frame_id: 42,
            body: ResponseBody::Mask(MaskResult {
                width: 4,
                height: 2,
                class_map: vec![0, 0, 0, 7, 7, 7, 7, 255],
                queue_us: 1_200,
                inference_us: 31_000,
                batch_size: 3,
            }),
        }
    }

    fn error_response(code: ErrorCode) -> Response {
        Response { frame_id: 9, body: ResponseBody::Error { code, message: "zu spät ⏱".to_owned() } }
    }

    /// Encodes and strips the length prefix, checking that it matches the body.
    fn request_body(req: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(req, &mut out).expect("valid request encodes");
        split_prefix(out)
    }

    fn response_body(resp: &Response) -> Vec<u8> {
        let mut out = Vec::new();
        encode_response(resp, &mut out).expect("valid response encodes");
        split_prefix(out)
    }

    fn split_prefix(mut message: Vec<u8>) -> Vec<u8> {
        let body = message.split_off(LENGTH_PREFIX_BYTES);
        let prefix: [u8; 4] = message.try_into().expect("four prefix bytes");
        assert_eq!(body_length(prefix, &Limits::default()), Ok(body.len()));
        body
    }

    // Offsets into the bodies built above, for crafting bad inputs.
    const REQUEST_MODEL_AT: usize = 17; // after header(4) frame_id(8) deadline(4) model_len(1)
    const JPEG_WIDTH_AT: usize = REQUEST_MODEL_AT + 1; // model "m"
    const JPEG_ENCODING_AT: usize = JPEG_WIDTH_AT + 8;
    const RAW_WIDTH_AT: usize = REQUEST_MODEL_AT + 7; // model "deeplab"
    const RESPONSE_STATUS_AT: usize = 12;
    const MASK_HEIGHT_AT: usize = 17;
    const ERROR_CODE_AT: usize = 13;

    #[test]
    fn requests_round_trip() {
        for req in [jpeg_request(), raw_request()] {
            let body = request_body(&req);
            assert_eq!(decode_request(&body, &Limits::default()), Ok(req));
        }
    }

    #[test]
    fn responses_round_trip() {
        let codes = [
            ErrorCode::Overloaded,
            ErrorCode::DeadlineExceeded,
            ErrorCode::UnknownModel,
            ErrorCode::BadRequest,
            ErrorCode::Internal,
            ErrorCode::Protocol,
        ];
        for resp in std::iter::once(mask_response()).chain(codes.map(error_response)) {
            let body = response_body(&resp);
            assert_eq!(decode_response(&body, &Limits::default()), Ok(resp));
        }
    }

    #[test]
    fn mask_is_sent_run_length_encoded() {
        let body = response_body(&mask_response());
        // rle_len then (0, 3) (7, 4) (255, 1)
        assert_eq!(&body[31..], &[0, 0, 0, 6, 0, 3, 7, 4, 255, 1]);
    }

    #[test]
    fn encoding_appends_and_failures_leave_buffer_untouched() {
        let mut out = b"earlier".to_vec();
        encode_request(&jpeg_request(), &mut out).unwrap();
        let after_first = out.clone();
        let bad = Request { width: 0, ..jpeg_request() };
        assert_eq!(encode_request(&bad, &mut out), Err(ProtoError::ZeroDimensions));
        assert_eq!(out, after_first);
        assert_eq!(&out[..7], b"earlier");
    }

    #[test]
    fn truncated_header_is_reported() {
        assert_eq!(decode_request(b"E", &Limits::default()), Err(ProtoError::Truncated { field: "magic", needed: 2, available: 1 }));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut body = request_body(&jpeg_request());
        body[..2].copy_from_slice(b"GE");
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::BadMagic { got: *b"GE" }));
    }

    #[test]
    fn other_versions_are_rejected() {
        let mut body = request_body(&jpeg_request());
        body[2] = 2;
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::UnsupportedVersion { got: 2, supported: VERSION }));
    }

    #[test]
    fn unknown_and_wrong_message_kinds_are_rejected() {
        let mut body = request_body(&jpeg_request());
        assert_eq!(decode_response(&body, &Limits::default()), Err(ProtoError::WrongMessageKind { expected: "response", got: "request" }));
        body[3] = 3;
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::UnknownMessageKind(3)));
        let body = response_body(&mask_response());
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::WrongMessageKind { expected: "request", got: "response" }));
    }

    #[test]
    fn unknown_enum_values_are_rejected() {
        let mut body = request_body(&jpeg_request());
        body[JPEG_ENCODING_AT] = 0;
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::UnknownImageEncoding(0)));

        let mut body = response_body(&error_response(ErrorCode::Internal));
        body[ERROR_CODE_AT] = 7;
        assert_eq!(decode_response(&body, &Limits::default()), Err(ProtoError::UnknownErrorCode(7)));

        let mut body = response_body(&mask_response());
        body[RESPONSE_STATUS_AT] = 3;
        assert_eq!(decode_response(&body, &Limits::default()), Err(ProtoError::UnknownResponseStatus(3)));
    }

    #[test]
    fn oversized_fields_are_rejected() {
        let small = Limits { max_message_bytes: 20, ..Limits::default() };
        let body = request_body(&jpeg_request());
        assert_eq!(decode_request(&body, &small), Err(ProtoError::TooLarge { what: "message body", size: body.len(), limit: 20 }));

        let short_names = Limits { max_model_name_bytes: 3, ..Limits::default() };
        let body = request_body(&raw_request());
        assert_eq!(decode_request(&body, &short_names), Err(ProtoError::TooLarge { what: "model name", size: 7, limit: 3 }));

        let long_name = Request { model: "x".repeat(256), ..jpeg_request() };
        assert_eq!(encode_request(&long_name, &mut Vec::new()), Err(ProtoError::TooLarge { what: "model name", size: 256, limit: 255 }));

        let long_message = Response { frame_id: 1, body: ResponseBody::Error { code: ErrorCode::Internal, message: "x".repeat(65_536) } };
        assert_eq!(
            encode_response(&long_message, &mut Vec::new()),
            Err(ProtoError::TooLarge { what: "error message", size: 65_536, limit: 65_535 })
        );
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_reading_the_body() {
        let limits = Limits::default();
        assert_eq!(
            body_length(u32::MAX.to_be_bytes(), &limits),
            Err(ProtoError::TooLarge { what: "message body", size: u32::MAX as usize, limit: limits.max_message_bytes })
        );
        let at_limit = u32::try_from(limits.max_message_bytes).unwrap();
        assert_eq!(body_length(at_limit.to_be_bytes(), &limits), Ok(limits.max_message_bytes));

        // Only the prefix has arrived: the splitter must fail now, not wait for 4 GiB.
        let mut splitter = FrameSplitter::new(limits);
        splitter.push(&u32::MAX.to_be_bytes());
        let error = splitter.next_body().unwrap_err();
        assert!(matches!(error, ProtoError::TooLarge { what: "message body", .. }));
        assert!(splitter.buffer.capacity() < 64);
        // The stream is unusable from here on.
        splitter.push(&request_body(&jpeg_request()));
        assert_eq!(splitter.next_body(), Err(error));
        assert_eq!(splitter.buffered_bytes(), 0);
    }

    #[test]
    fn dimensions_are_checked() {
        let narrow = Limits { max_width: 32, ..Limits::default() };
        let body = request_body(&jpeg_request());
        assert_eq!(
            decode_request(&body, &narrow),
            Err(ProtoError::DimensionsTooLarge { width: 64, height: 48, max_width: 32, max_height: 4096 })
        );
        let body = response_body(&mask_response());
        let flat = Limits { max_height: 1, ..Limits::default() };
        assert!(matches!(decode_response(&body, &flat), Err(ProtoError::DimensionsTooLarge { width: 4, height: 2, .. })));

        let mut body = request_body(&jpeg_request());
        body[JPEG_WIDTH_AT..JPEG_WIDTH_AT + 4].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::ZeroDimensions));

        let flat_mask = Response {
            frame_id: 1,
            body: ResponseBody::Mask(MaskResult {
                width: 3,
                height: 0,
                class_map: Vec::new(),
                queue_us: 0,
                inference_us: 0,
                batch_size: 1,
            }),
        };
        assert_eq!(encode_response(&flat_mask, &mut Vec::new()), Err(ProtoError::ZeroDimensions));
    }

    #[test]
    fn image_sizes_are_checked() {
        let empty = Request { image: Vec::new(), ..jpeg_request() };
        assert_eq!(encode_request(&empty, &mut Vec::new()), Err(ProtoError::EmptyImage));

        let short = Request { image: vec![0; 11], ..raw_request() };
        let mismatch = ProtoError::ImageSizeMismatch { width: 2, height: 2, expected: 12, actual: 11 };
        assert_eq!(encode_request(&short, &mut Vec::new()), Err(mismatch));

        let mut body = request_body(&raw_request());
        body[RAW_WIDTH_AT..RAW_WIDTH_AT + 4].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            decode_request(&body, &Limits::default()),
            Err(ProtoError::ImageSizeMismatch { width: 3, height: 2, expected: 18, actual: 12 })
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut body = request_body(&jpeg_request());
        body[REQUEST_MODEL_AT] = 0xff;
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::InvalidUtf8 { field: "model name" }));
        let mut body = response_body(&error_response(ErrorCode::Internal));
        let last = body.len() - 1;
        body[last] = 0xc3; // starts a two-byte sequence that never finishes
        assert_eq!(decode_response(&body, &Limits::default()), Err(ProtoError::InvalidUtf8 { field: "error message" }));
    }

    #[test]
    fn class_map_size_must_match_dimensions() {
        let mut resp = mask_response();
        if let ResponseBody::Mask(mask) = &mut resp.body {
            mask.class_map.pop();
        }
        assert_eq!(encode_response(&resp, &mut Vec::new()), Err(ProtoError::ClassMapSizeMismatch { expected: 8, decoded: 7 }));

        let mut body = response_body(&mask_response());
        body[MASK_HEIGHT_AT..MASK_HEIGHT_AT + 4].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(decode_response(&body, &Limits::default()), Err(ProtoError::ClassMapSizeMismatch { expected: 12, decoded: 8 }));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = request_body(&jpeg_request());
        body.push(0);
        assert_eq!(decode_request(&body, &Limits::default()), Err(ProtoError::TrailingBytes(1)));
        let mut body = response_body(&mask_response());
        body.extend_from_slice(&[1, 2]);
        assert_eq!(decode_response(&body, &Limits::default()), Err(ProtoError::TrailingBytes(2)));
    }

    #[test]
    fn malformed_run_length_data_is_rejected() {
        let bad_rle = |data: &[u8], expected_len, offset, reason| {
            let mut out = vec![9];
            assert_eq!(rle_decode(data, expected_len, &mut out), Err(ProtoError::BadRle { offset, reason }), "{data:?}");
            assert_eq!(out, [9], "failed decode must not touch the output");
        };
        bad_rle(&[1], 1, 1, "run length is cut off");
        bad_rle(&[1, 0x80], 1, 1, "run length is cut off");
        bad_rle(&[1, 0], 1, 0, "run of length zero");
        bad_rle(&[1, 2, 1, 3], 5, 2, "run continues the previous class; runs must be maximal");
        bad_rle(&[1, 0x81, 0x00], 1, 1, "run length has redundant zero groups");
        bad_rle(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], 1, 1, "run length overflows 64 bits");
        bad_rle(&[1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x00], 1, 1, "run length is longer than 10 bytes");

        // The largest varint is accepted by the parser and then fails only the size check.
        let max_run = [1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(rle_decode(&max_run, 4, &mut Vec::new()), Err(ProtoError::ClassMapSizeMismatch { expected: 4, decoded: u64::MAX }));
    }

    #[test]
    fn huge_declared_runs_are_rejected_without_allocating() {
        // A few bytes claiming 16 million pixels for a 2-pixel map.
        let mut data = vec![3];
        write_varint(&mut data, 16 << 20);
        let mut out = Vec::new();
        assert_eq!(rle_decode(&data, 2, &mut out), Err(ProtoError::ClassMapSizeMismatch { expected: 2, decoded: 16 << 20 }));
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let limits = Limits::default();
        for body in [request_body(&jpeg_request()), request_body(&raw_request())] {
            for end in 0..body.len() {
                assert!(decode_request(&body[..end], &limits).is_err(), "cut at {end}");
            }
        }
        let responses = [mask_response(), error_response(ErrorCode::Overloaded)];
        for body in responses.iter().map(response_body) {
            for end in 0..body.len() {
                assert!(decode_response(&body[..end], &limits).is_err(), "cut at {end}");
            }
        }
    }

    fn two_messages() -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut stream = Vec::new();
        encode_request(&jpeg_request(), &mut stream).unwrap();
        encode_response(&mask_response(), &mut stream).unwrap();
        let bodies = vec![request_body(&jpeg_request()), response_body(&mask_response())];
        (stream, bodies)
    }

    fn split_in_chunks(stream: &[u8], chunk_sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut splitter = FrameSplitter::new(Limits::default());
        let mut bodies = Vec::new();
        let mut rest = stream;
        for &size in chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
            rest = tail;
            splitter.push(chunk);
            while let Some(body) = splitter.next_body().expect("valid stream") {
                bodies.push(body);
            }
        }
        assert_eq!(splitter.buffered_bytes(), 0);
        bodies
    }

    #[test]
    fn splitter_handles_one_byte_at_a_time() {
        let (stream, bodies) = two_messages();
        let mut splitter = FrameSplitter::new(Limits::default());
        let mut popped = Vec::new();
        for (index, byte) in stream.iter().enumerate() {
            splitter.push(std::slice::from_ref(byte));
            if let Some(body) = splitter.next_body().unwrap() {
                popped.push(body);
            } else {
                assert!(splitter.buffered_bytes() > 0, "byte {index} left nothing buffered");
            }
        }
        assert_eq!(popped, bodies);
        assert_eq!(splitter.next_body(), Ok(None));
        assert_eq!(splitter.buffered_bytes(), 0);
    }

    #[test]
    fn splitter_handles_whole_stream_at_once_and_empty_bodies() {
        let (mut stream, mut bodies) = two_messages();
        stream.extend_from_slice(&[0; 4]);
        bodies.push(Vec::new());
        assert_eq!(split_in_chunks(&stream, &[stream.len()]), bodies);
    }

    #[test]
    fn splitter_reports_a_partial_message_at_end_of_stream() {
        let (stream, _) = two_messages();
        let mut splitter = FrameSplitter::new(Limits::default());
        splitter.push(&stream[..stream.len() - 1]);
        assert!(splitter.next_body().unwrap().is_some());
        assert_eq!(splitter.next_body(), Ok(None));
        assert!(splitter.buffered_bytes() > 0);
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let error = body_length(u32::MAX.to_be_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "message body is 4294967295 bytes, over the limit of 16777216; \
             send less or raise the limit"
        );
    }

    fn request_strategy() -> impl Strategy<Value = Request> {
        let raw = (1u32..40, 1u32..40).prop_flat_map(|(width, height)| {
            let len = (width * height * 3) as usize;
            (Just(width), Just(height), Just(ImageEncoding::RawBgr8), prop::collection::vec(any::<u8>(), len))
        });
        let jpeg = (1u32..=4096, 1u32..=4096, Just(ImageEncoding::Jpeg), prop::collection::vec(any::<u8>(), 1..300));
        // At most 16 characters of up to 4 bytes each stays within the default 64-byte limit.
        (any::<u64>(), any::<u32>(), "\\PC{0,16}", prop_oneof![raw, jpeg]).prop_map(
            |(frame_id, deadline_ms, model, (width, height, encoding, image))| Request {
                frame_id,
                deadline_ms,
                model,
                width,
                height,
                encoding,
                image,
            },
        )
    }

    /// Class maps with long runs over few classes, like real segmentations, plus noise.
    fn class_map_strategy(len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(0u8..3, len),
            prop::collection::vec(any::<u8>(), len),
            (any::<u8>(), any::<u8>(), 0..=len).prop_map(move |(a, b, split)| {
                let mut map = vec![a; len];
                map[split..].fill(b);
                map
            }),
        ]
    }

    fn response_strategy() -> impl Strategy<Value = Response> {
        let mask = (1u32..64, 1u32..64)
            .prop_flat_map(|(width, height)| {
                (Just(width), Just(height), class_map_strategy((width * height) as usize), any::<u32>(), any::<u32>(), any::<u16>())
            })
            .prop_map(|(width, height, class_map, queue_us, inference_us, batch_size)| {
                ResponseBody::Mask(MaskResult { width, height, class_map, queue_us, inference_us, batch_size })
            });
        let error = (1u8..=6, "\\PC{0,200}")
            .prop_map(|(code, message)| ResponseBody::Error { code: ErrorCode::try_from(code).expect("code in range"), message });
        (any::<u64>(), prop_oneof![mask, error]).prop_map(|(frame_id, body)| Response { frame_id, body })
    }

    #[test]
    fn word_wise_run_length_matches_byte_by_byte() {
        for len in 0..40 {
            for run in 0..=len {
                let mut bytes = vec![7u8; len];
                if run < len {
                    bytes[run] = 8;
                }
                assert_eq!(run_length(&bytes, 7), run, "len {len}, run {run}");
            }
        }
    }

    proptest! {
        #[test]
        fn request_round_trip(req in request_strategy()) {
            let body = request_body(&req);
            prop_assert_eq!(decode_request(&body, &Limits::default()), Ok(req));
        }

        #[test]
        fn response_round_trip(resp in response_strategy()) {
            let body = response_body(&resp);
            prop_assert_eq!(decode_response(&body, &Limits::default()), Ok(resp));
        }

        #[test]
        fn rle_round_trip(class_map in (0usize..2000).prop_flat_map(class_map_strategy)) {
            let mut encoded = Vec::new();
            rle_encode(&class_map, &mut encoded);
            let mut decoded = Vec::new();
            rle_decode(&encoded, class_map.len(), &mut decoded).unwrap();
            prop_assert_eq!(decoded, class_map);
        }

        #[test]
        fn rle_decoding_is_canonical(data in prop::collection::vec(any::<u8>(), 0..64), expected_len in 0usize..5000) {
            let mut decoded = Vec::new();
            if rle_decode(&data, expected_len, &mut decoded).is_ok() {
                let mut encoded = Vec::new();
                rle_encode(&decoded, &mut encoded);
                prop_assert_eq!(encoded, data);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_bodies_reencode_exactly(
            data in prop::collection::vec(any::<u8>(), 0..256),
            header in prop::sample::select(vec![None, Some(KIND_REQUEST), Some(KIND_RESPONSE)]),
        ) {
            // Half the cases get a valid header, so the fields behind it are exercised too.
            let mut body = Vec::new();
            if let Some(kind) = header {
                write_header(&mut body, kind);
            }
            body.extend_from_slice(&data);
            let limits = Limits::default();
            if let Ok(req) = decode_request(&body, &limits) {
                let mut out = Vec::new();
                encode_request(&req, &mut out).unwrap();
                prop_assert_eq!(&out[LENGTH_PREFIX_BYTES..], &body[..]);
            }
            if let Ok(resp) = decode_response(&body, &limits) {
                let mut out = Vec::new();
                encode_response(&resp, &mut out).unwrap();
                prop_assert_eq!(&out[LENGTH_PREFIX_BYTES..], &body[..]);
            }
            let mut splitter = FrameSplitter::new(Limits { max_message_bytes: 64, ..limits });
            splitter.push(&body);
            while let Ok(Some(_)) = splitter.next_body() {}
        }

        #[test]
        fn splitter_handles_random_chunks(chunk_sizes in prop::collection::vec(1usize..40, 1..20)) {
            let (stream, bodies) = two_messages();
            prop_assert_eq!(split_in_chunks(&stream, &chunk_sizes), bodies);
        }
    }
}
