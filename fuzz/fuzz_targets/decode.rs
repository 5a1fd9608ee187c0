//! Feeds arbitrary bytes to everything in `remote::proto` that reads from the network: the two
//! body decoders and the stream splitter. Run from the crate root with
//! `cargo +nightly fuzz run decode fuzz/corpus/decode fuzz/seeds`: the seeds are valid messages
//! (bare bodies, and streams whose first byte is the read size), without which libFuzzer
//! spends minutes just finding the magic.
//!
//! Besides "never panics", it checks that decoding is canonical: any body the decoders accept
//! re-encodes to exactly the same bytes, so encoder and decoder cannot drift apart.
#![no_main]

use edgeseg::remote::proto::{
    decode_request, decode_response, encode_request, encode_response, FrameSplitter, Limits,
    LENGTH_PREFIX_BYTES,
};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches the limit checks quickly and a decoded class map
/// (at most 256 × 256 bytes) cannot exhaust memory.
const LIMITS: Limits = Limits {
    max_message_bytes: 1 << 16,
    max_width: 256,
    max_height: 256,
    max_model_name_bytes: 64,
};

fn decode_body(body: &[u8]) {
    if let Ok(request) = decode_request(body, &LIMITS) {
        let mut message = Vec::new();
        encode_request(&request, &mut message).expect("a decoded request re-encodes");
        assert_eq!(&message[LENGTH_PREFIX_BYTES..], body, "request decoding is not canonical");
    }
    if let Ok(response) = decode_response(body, &LIMITS) {
        let mut message = Vec::new();
        encode_response(&response, &mut message).expect("a decoded response re-encodes");
        assert_eq!(&message[LENGTH_PREFIX_BYTES..], body, "response decoding is not canonical");
    }
}

fuzz_target!(|data: &[u8]| {
    decode_body(data);

    // As a stream: the first byte picks the read size, so partial reads are exercised too.
    let Some((&read_size, stream)) = data.split_first() else {
        return;
    };
    let mut splitter = FrameSplitter::new(LIMITS);
    let mut buffered = 0;
    for read in stream.chunks(usize::from(read_size).max(1)) {
        splitter.push(read);
        buffered += read.len();
        loop {
            match splitter.next_body() {
                Ok(Some(body)) => {
                    buffered -= LENGTH_PREFIX_BYTES + body.len();
                    decode_body(&body);
                }
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(splitter.buffered_bytes(), 0, "a failed splitter keeps no data");
                    return;
                }
            }
        }
        assert_eq!(splitter.buffered_bytes(), buffered);
    }
});
