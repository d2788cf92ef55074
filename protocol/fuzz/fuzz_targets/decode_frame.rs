//! Fuzz target: arbitrary bytes through `frame::decode` in a loop, as a
//! connection reader would, checking that decoding never panics and that
//! every decoded message re-encodes to a frame that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_protocol::frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    // Ok(None): the rest is an incomplete frame; Err: the reader closes.
    while let Ok(Some((msg, n))) = frame::decode(buf) {
        assert!(n > frame::LEN_FIELD && n <= buf.len());
        let again = msg.to_frame();
        let (back, m) = frame::decode(&again).expect("re-encoded frame decodes").expect("re-encoded frame is whole");
        assert_eq!(m, again.len());
        assert_eq!(back, msg);
        buf = &buf[n..];
    }
});
