//! Serde field helpers: byte strings and sequences that decode without
//! trusting the peer's declared lengths.
//!
//! serde's own `Vec<T>` preallocates up to 1 MiB from a declared count, so a
//! ten-byte frame could make the decoder allocate a megabyte. These helpers
//! keep every allocation proportional to bytes actually present:
//! byte strings go through postcard's `deserialize_byte_buf`, which checks
//! the length against the remaining input before copying, and sequences
//! grow as elements decode. The wire form is unchanged: postcard writes a
//! byte string exactly like a sequence of `u8` (varint count, raw bytes).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// Capacity reserved up front for a sequence, whatever count it declares.
const PREALLOC: usize = 64;

/// A borrowed byte string that serializes as bytes.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// An owned byte string that deserializes from bytes.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(BytesVisitor).map(ByteBuf)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    // Self-describing formats may hand bytes over as a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOC));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// A sequence visitor that reserves at most [`PREALLOC`] elements up front.
struct SeqVisitor<T, F>(PhantomData<(T, F)>);

impl<'de, T, F> Visitor<'de> for SeqVisitor<T, F>
where
    F: Deserialize<'de> + Into<T>,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOC));
        while let Some(item) = seq.next_element::<F>()? {
            out.push(item.into());
        }
        Ok(out)
    }
}

impl From<ByteBuf> for Vec<u8> {
    fn from(b: ByteBuf) -> Vec<u8> {
        b.0
    }
}

/// `#[serde(with = "codec::bytes")]` for `Vec<u8>`.
pub(crate) mod bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// `#[serde(with = "codec::opt_bytes")]` for `Option<Vec<u8>>`.
pub(crate) mod opt_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(Bytes).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }
}

/// `#[serde(with = "codec::byte_seq")]` for `Vec<Vec<u8>>`.
pub(crate) mod byte_seq {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes(b)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        d.deserialize_seq(SeqVisitor::<Vec<u8>, ByteBuf>(PhantomData))
    }
}

/// `#[serde(with = "codec::seq")]` for `Vec<T>`.
pub(crate) mod seq {
    use super::*;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(SeqVisitor::<T, T>(PhantomData))
    }
}
