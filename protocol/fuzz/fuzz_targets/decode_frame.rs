//! Fuzz target: arbitrary bytes through `check`/`parse` in a loop, as a
//! connection reader would, checking that decoding never panics and that
//! every decoded message re-encodes to a frame that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_protocol::frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match frame::check(buf) {
            Ok(Some(n)) => {
                if let Ok(msg) = frame::parse(&buf[..n]) {
                    let again = msg.to_frame();
                    assert_eq!(frame::parse(&again).ok(), Some(msg));
                }
                buf = &buf[n..];
            }
            Ok(None) | Err(_) => break,
        }
    }
});
