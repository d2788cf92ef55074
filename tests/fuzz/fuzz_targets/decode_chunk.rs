//! Fuzz target: `xfer_core::codec::decode` as the receiver calls it on a
//! `ChunkData` (src/core/session/receiver, src/fs/store/mirror): the codec tag
//! checked with `Codec::try_from`, the declared length as sent, a fixed
//! chunk id, and for a delta the receiver's base bytes (or none).
//!
//! Input: `tag: u8`, `decoded_len: u32 LE`, `base_len: u16 LE` (0xffff: no
//! base), the base (clamped to what is there), then the payload.
//!
//! Must not panic or allocate beyond the declared length. Where the bytes
//! decode but are not the fixed chunk, decoding them again under the id of
//! what came out must succeed with the declared length.
//!
//! A zstd stream chunk (codec 4) goes to a `StreamDecoder` instead, as two
//! payloads of one stream split where the base would end, each declared
//! `decoded_len` long: what decodes has exactly that length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_core::codec::{self, Codec, CodecError, EncodedChunk, StreamDecoder};
use xfer_core::hash::ChunkId;

const NO_BASE: u16 = u16::MAX;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<7>() else { return };
    let Ok(codec) = Codec::try_from(head[0]) else { return };
    let decoded_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let base_len = u16::from_le_bytes([head[5], head[6]]);
    if codec == Codec::ZstdStream {
        let mut stream = StreamDecoder::new().expect("a decoder");
        let (first, second) = rest.split_at(usize::from(base_len).min(rest.len()));
        for payload in [first, second] {
            match stream.decode(payload, decoded_len) {
                Ok(bytes) => assert_eq!(bytes.len(), decoded_len as usize),
                Err(_) => break,
            }
        }
        let chunk = EncodedChunk { codec, decoded_len, payload: rest.to_vec() };
        assert!(codec::decode(&chunk, &ChunkId([0x5a; 32]), None).is_err(), "a stream chunk outside its stream");
        return;
    }
    let (base, payload) = if base_len == NO_BASE {
        (None, rest)
    } else {
        let (base, payload) = rest.split_at(usize::from(base_len).min(rest.len()));
        (Some(base), payload)
    };
    let chunk = EncodedChunk { codec, decoded_len, payload: payload.to_vec() };
    let id = ChunkId([0x5a; 32]);
    match codec::decode(&chunk, &id, base) {
        Ok(bytes) => assert_eq!(ChunkId::of(&bytes), id),
        Err(CodecError::HashMismatch { actual, .. }) => {
            let bytes = codec::decode(&chunk, &actual, base).expect("same bytes under their own id decode");
            assert_eq!(bytes.len(), decoded_len as usize);
        }
        Err(_) => {}
    }
});
