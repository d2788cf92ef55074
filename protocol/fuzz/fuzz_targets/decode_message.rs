//! Fuzz target: one message body of each kind. The crate does not expose a
//! body decoder (`Message::decode_body` is crate-private), so the first
//! input byte picks a registered kind and the rest is framed as its body.
//! Decoding must not panic, and a decoded message must roundtrip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_protocol::{frame, Kind};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let kind = Kind::ALL[usize::from(pick) % Kind::ALL.len()];
    let mut buf = Vec::with_capacity(frame::HEADER_LEN + body.len());
    frame::encode_raw(kind as u8, body, &mut buf);
    match frame::decode(&buf) {
        Ok(Some((msg, n))) => {
            assert_eq!(n, buf.len());
            assert_eq!(msg.kind(), kind);
            assert!(msg.validate().is_ok());
            let again = msg.to_frame();
            assert_eq!(frame::decode(&again).unwrap().map(|(m, _)| m), Some(msg));
        }
        // The body is whole, so "incomplete" would be a bug.
        Ok(None) => panic!("a whole frame reported incomplete"),
        Err(_) => {}
    }
});
