//! Golden bytes of the delta formats, block keys and digests (SPEC.md
//! sections 12 to 14), so none can drift, and refusal of malformed input.

use xfer_protocol::codec::*;
use xfer_protocol::digest::{content_hash, entry_digest, listing_digest, EntryContent, EntryMeta};
use xfer_protocol::keys::block_key;
use xfer_protocol::msg::{Hash, Mtime};
use xfer_protocol::patch::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex")).collect()
}

#[test]
fn codec_registry_numbers() {
    assert_eq!([CODEC_RAW, CODEC_ZSTD, CODEC_LZ4, CODEC_DELTA], [0, 1, 2, 3]);
    assert_eq!(CODECS, [0, 1, 2, 3]);
    assert_eq!([LITERALS_RAW, LITERALS_ZSTD, LITERALS_ZSTD_COPIES], [0, 1, 2]);
    assert_eq!(LITERAL_MODES, [0, 1, 2]);
    assert_eq!((LITERAL_ZSTD_LEVEL, MIN_COMPRESS_LEN), (6, 32));
    assert_eq!(xfer_protocol::msg::CODEC_DELTA, CODEC_DELTA);
}

/// Copy 256 bytes from 128, 5 literal bytes, copy 64 bytes from 0 (a
/// backward distance), raw literals.
const PATCH: &str = "c50203810480020a8101ff050068656c6c6f";

fn patch_ops() -> Vec<PatchOp> {
    vec![PatchOp::Copy { offset: 128, len: 256 }, PatchOp::Literal { len: 5 }, PatchOp::Copy { offset: 0, len: 64 }]
}

#[test]
fn patch_golden_bytes() {
    let literals = Literals { mode: LITERALS_RAW, bytes: b"hello" };
    let bytes = encode_patch(325, &patch_ops(), Some(literals));
    assert_eq!(hex(&bytes), PATCH);
    let decoded = decode_patch(&bytes, 400, 325).expect("golden patch decodes");
    assert_eq!(decoded, DecodedPatch { new_len: 325, ops: patch_ops(), literal_len: 5, literals: Some(literals) });

    // Copies only: no literal section; the distance is from 0.
    let copy = [PatchOp::Copy { offset: 64, len: 8192 }];
    assert_eq!(hex(&encode_patch(8192, &copy, None)), "8040018180018001");
    let bytes = unhex("8040018180018001");
    let decoded = decode_patch(&bytes, 8256, 8192).expect("copy-only patch decodes");
    assert_eq!((decoded.ops, decoded.literals), (copy.to_vec(), None));
}

#[test]
fn patch_decode_refuses_malformed() {
    let good = unhex(PATCH);
    for cut in 0..good.len() - 5 {
        assert!(decode_patch(&good[..cut], 400, 325).is_err(), "cut at {cut}");
    }
    assert!(matches!(decode_patch(&good, 400, 324), Err(PatchError::TooLarge { .. })));
    assert!(matches!(decode_patch(&good, 383, 325), Err(PatchError::CopyOutOfBounds { op: 0, .. })));
    let mut mode = good.clone();
    mode[good.len() - 6] = 3;
    assert!(matches!(decode_patch(&mode, 400, 325), Err(PatchError::LiteralMode(3))));
    let mut trailing = unhex("8040018180018001");
    trailing.push(0);
    assert!(matches!(decode_patch(&trailing, 8256, 8192), Err(PatchError::Trailing { .. })));
    // Declared 10 bytes, one op of 5.
    assert!(matches!(decode_patch(&[10, 1, 5 << 1 | 1, 0], 100, 100), Err(PatchError::OpsLen { .. })));
    assert!(matches!(decode_patch(&[10, 1, 1, 0], 100, 100), Err(PatchError::EmptyOp { op: 0 })));
}

/// A 200-byte base in 64-byte blocks, 20-bit keys: three keys, 4 padding bits.
const SIGNATURE: &str = "c80106144523f1ffff010000";

#[test]
fn signature_golden_bytes() {
    let sig = Signature::from_parts(200, 6, 20, vec![0x12345, 0xfffff, 0x00001]).expect("in range");
    assert_eq!(hex(&sig.encode()), SIGNATURE);
    let back = Signature::decode(&unhex(SIGNATURE)).expect("golden signature decodes");
    assert_eq!(back, sig);
    assert_eq!(
        (back.base_len(), back.block_len(), back.key_bits(), back.keys()),
        (200, 64, 20, &[0x12345, 0xfffff, 1][..])
    );
}

#[test]
fn signature_refuses_malformed() {
    let good = unhex(SIGNATURE);
    let mut padded = good.clone();
    *padded.last_mut().expect("not empty") = 0x10;
    assert!(matches!(Signature::decode(&padded), Err(PatchError::Padding)));
    assert!(matches!(Signature::decode(&good[..good.len() - 1]), Err(PatchError::KeysLen { .. })));
    assert!(matches!(Signature::from_parts(200, 6, 20, vec![1 << 20, 0, 0]), Err(PatchError::Padding)));
    assert!(matches!(Signature::from_parts(200, 6, 20, vec![0, 0]), Err(PatchError::KeysLen { .. })));
    assert!(matches!(Signature::from_parts(200, 5, 20, vec![]), Err(PatchError::BlockLen { log2: 5 })));
    assert!(matches!(Signature::from_parts(200, 6, 33, vec![]), Err(PatchError::KeyBits { bits: 33 })));
    assert!(matches!(Signature::from_parts(MAX_BASE_LEN + 1, 6, 20, vec![]), Err(PatchError::BaseTooLarge { .. })));
}

#[test]
fn ranges_golden_bytes() {
    // The second range lies before the first: a negative distance.
    let ranges = [100..228, 50..60, 4000..4001];
    let bytes = encode_ranges(&ranges);
    assert_eq!(hex(&bytes), "03c8018001e3020ac83d01");
    assert_eq!(decode_ranges(&bytes, 4001).expect("golden ranges decode"), ranges);
    assert!(matches!(decode_ranges(&bytes, 4000), Err(PatchError::RangeOutOfBounds { index: 2, .. })));
    let too_many = [vec![65u8], [0, 1].repeat(65)].concat();
    assert!(matches!(decode_ranges(&too_many, 1000), Err(PatchError::TooManyRanges { count: 65 })));
}

#[test]
fn block_keys_golden() {
    let block: Vec<u8> = (0..64u8).collect();
    let keys = [16, 20, 27, 32].map(|bits| block_key(&block, bits));
    assert_eq!(keys, KEYS);
    assert_eq!(keys[0], keys[3] >> 16, "keys are the top bits of one mixed hash");
    assert_eq!(block_key(&[0; 64], 20), ZERO_KEY);
}

const KEYS: [u32; 4] = [57525, 920410, 117812509, 3770000291];
const ZERO_KEY: u32 = 52787;

fn meta() -> EntryMeta<'static> {
    EntryMeta {
        mode: 0o640,
        mtime: Mtime { secs: 1_700_000_000, nanos: 5 },
        uid: 1000,
        gid: 100,
        user: b"alice",
        group: b"users",
    }
}

#[test]
fn digests_golden() {
    let file_hash = content_hash(b"hello");
    assert_eq!(hex(&file_hash), "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f");
    let xattrs = [(&b"user.a"[..], &b"1"[..]), (b"user.b", b"")];
    let file = entry_digest(b"f", &meta(), xattrs.into_iter(), EntryContent::File { size: 5, hash: &file_hash });
    let link = EntryContent::HardLink { target: b"d/f", size: 5, hash: &file_hash };
    let hard = entry_digest(b"h", &meta(), [].into_iter(), link);
    let symlink = entry_digest(b"l", &EntryMeta::default(), [].into_iter(), EntryContent::Symlink { target: b"../x" });
    let listing = listing_digest([(&b"f"[..], &file), (b"h", &hard)]);
    let dir = entry_digest(b"d", &meta(), [].into_iter(), EntryContent::Dir { listing: &listing });
    let root = listing_digest([(&b"d"[..], &dir), (b"l", &symlink)]);
    let got: Vec<String> = [file, hard, symlink, listing, dir, root].iter().map(|h| hex(h)).collect();
    assert_eq!(got, DIGESTS);
}

const DIGESTS: [&str; 6] = [
    "4340233bc6d2be4f1e731300e7abb025a98e8d0d5b7a7ad56a3a514ab315d08e",
    "53d09e20a24b6d3b39f196a90432f8845a3e229f531be5e794f52614b67c9ba1",
    "7adc765b5cbafb812ed7c8834636f515584fdc1bf87406c1e6290cde0cf186f8",
    "24b2bda3d4dedb2eddff7f2612017b006b42da60bd743afc1f770ce83384519a",
    "09d8c19dc2934d519f157cc15220c78d9bc23208002ec0b4357c231f5182a898",
    "724732c4e56edce445eb0bdabf8d338bd64f7cfb2ffa5f100a505e365b5d2f7b",
];

#[test]
fn digest_example_of_the_spec() {
    // SPEC.md section 12: a tree holding only an empty directory `e`.
    let empty: Hash = content_hash(b"");
    let mut entry = Vec::new();
    entry.extend_from_slice(&1u64.to_le_bytes());
    entry.push(b'e');
    entry.extend_from_slice(&[0; 4 + 8 + 4 + 4 + 4]);
    entry.extend_from_slice(&[0; 8 * 3]);
    entry.push(b'd');
    entry.extend_from_slice(&empty);
    let d = content_hash(&entry);
    assert_eq!(entry_digest(b"e", &EntryMeta::default(), [].into_iter(), EntryContent::Dir { listing: &empty }), d);
    assert_eq!(listing_digest([]), empty);
    let root = content_hash(&[&1u64.to_le_bytes()[..], b"e", &d].concat());
    assert_eq!(listing_digest([(&b"e"[..], &d)]), root);
}
