//! Framing: `len: u32 LE` + `kind: u8` + body, decoded in two phases.
//!
//! Like tokio-rs/mini-redis: the reader calls [`check`] on its buffer, which
//! answers `Ok(None)` until a whole frame is there (and refuses an oversized
//! declared length at once, before buffering any of it); then [`parse`]
//! decodes the frame, and the caller advances its buffer by the length
//! [`check`] returned. [`decode`] does both. Encoding is infallible.

use crate::error::DecodeError;
use crate::limits::MAX_FRAME_LEN;
use crate::msg::{Kind, Message};

/// Bytes of the length field.
pub const LEN_FIELD: usize = 4;

/// Bytes before the body: the length field and the kind byte.
pub const HEADER_LEN: usize = LEN_FIELD + 1;

/// Looks for one whole frame at the start of `buf`.
///
/// Returns `Ok(Some(n))` when the first `n` bytes of `buf` are a whole frame
/// (header included), `Ok(None)` when more bytes are needed. Reads at most
/// the header: the body is left to [`parse`].
///
/// # Errors
///
/// As soon as the header shows it: [`DecodeError::TooLarge`] for a declared
/// length over [`MAX_FRAME_LEN`], [`DecodeError::Empty`] for length 0 and
/// [`DecodeError::UnknownKind`] for a kind not in the registry.
pub fn check(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(len_bytes) = buf.first_chunk::<LEN_FIELD>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*len_bytes);
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge { len: len.into(), max: MAX_FRAME_LEN.into() });
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    if let Some(&kind) = buf.get(LEN_FIELD) {
        Kind::from_u8(kind).ok_or(DecodeError::UnknownKind(kind))?;
    }
    // len <= MAX_FRAME_LEN, so this neither overflows nor truncates.
    let total = LEN_FIELD + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes the frame at the start of `buf`, ignoring any bytes after it.
///
/// Call after [`check`] returned `Some(n)`, then advance the buffer by `n`.
///
/// # Errors
///
/// Everything [`check`] reports, [`DecodeError::UnexpectedEnd`] if `buf`
/// holds less than the whole frame, and the body errors
/// ([`DecodeError::Body`], [`DecodeError::Invalid`], [`DecodeError::Limit`]).
pub fn parse(buf: &[u8]) -> Result<Message, DecodeError> {
    let have = buf.len() as u64;
    let Some(total) = check(buf)? else {
        let need = match buf.first_chunk::<LEN_FIELD>() {
            Some(len) => LEN_FIELD as u64 + u64::from(u32::from_le_bytes(*len)),
            None => LEN_FIELD as u64,
        };
        return Err(DecodeError::UnexpectedEnd { need, have });
    };
    let kind_byte = buf[LEN_FIELD];
    let kind = Kind::from_u8(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
    Message::decode_body(kind, &buf[HEADER_LEN..total])
}

/// [`check`] then [`parse`]: the first message in `buf` and the bytes it
/// took, or `None` if `buf` does not yet hold a whole frame.
///
/// # Errors
///
/// As [`check`] and [`parse`].
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    match check(buf)? {
        None => Ok(None),
        Some(n) => parse(&buf[..n]).map(|m| Some((m, n))),
    }
}

/// Appends `msg` to `out` as one frame.
///
/// Does not check limits: a message over one (see [`Message::validate`])
/// is encoded all the same and refused by the peer. Debug builds assert
/// that the message is valid.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    debug_assert!(msg.validate().is_ok(), "encoding an invalid message: {:?}", msg.validate());
    let start = out.len();
    out.extend_from_slice(&[0; LEN_FIELD]);
    out.push(msg.kind() as u8);
    *out = msg.encode_body(std::mem::take(out));
    patch_len(out, start);
}

/// Appends a frame of `kind` with the given raw body to `out`, unchecked:
/// for tests and fuzz seeds that need frames no [`Message`] encodes to.
pub fn encode_raw(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_FIELD]);
    out.push(kind);
    out.extend_from_slice(body);
    patch_len(out, start);
}

/// Writes the length field of the frame that starts at `start`.
fn patch_len(out: &mut [u8], start: usize) {
    // A body over 4 GiB cannot come from a valid message; saturating makes
    // the peer refuse it as TooLarge instead of misreading a wrapped length.
    let len = u32::try_from(out.len() - start - LEN_FIELD).unwrap_or(u32::MAX);
    out[start..start + LEN_FIELD].copy_from_slice(&len.to_le_bytes());
}

impl Message {
    /// The message as one frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(self, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Commit, Done};

    #[test]
    fn check_waits_for_whole_frame() {
        let frame = Message::Commit(Commit { seq: 300 }).to_frame();
        assert_eq!(frame, [3, 0, 0, 0, 64, 0xac, 0x02]);
        for n in 0..frame.len() {
            assert_eq!(check(&frame[..n]).unwrap(), None, "prefix {n}");
        }
        assert_eq!(check(&frame).unwrap(), Some(frame.len()));
    }

    #[test]
    fn decode_reads_back_to_back_frames() {
        let mut buf = Vec::new();
        encode(&Message::Commit(Commit { seq: 1 }), &mut buf);
        encode(&Message::Done(Done), &mut buf);
        let (first, n) = decode(&buf).unwrap().unwrap();
        assert_eq!(first, Message::Commit(Commit { seq: 1 }));
        let (second, m) = decode(&buf[n..]).unwrap().unwrap();
        assert_eq!(second, Message::Done(Done));
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn check_refuses_empty_frame() {
        assert!(matches!(check(&[0, 0, 0, 0]), Err(DecodeError::Empty)));
    }
}
