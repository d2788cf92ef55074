//! Golden frame bytes per message kind, roundtrip property tests, and
//! refusal of truncated, oversized and unknown frames.

use proptest::collection::vec;
use proptest::prelude::*;

use xfer_protocol::frame::{self, HEADER_LEN};
use xfer_protocol::msg::*;
use xfer_protocol::*;

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn id(b: u8) -> Hash {
    [b; 32]
}

fn mtime() -> Mtime {
    Mtime { secs: 1_700_000_000, nanos: 123_456_789 }
}

fn attrs() -> Attrs {
    Attrs {
        uid: 1000,
        gid: 100,
        user: b"alice".to_vec(),
        group: b"users".to_vec(),
        xattrs: vec![Xattr { name: b"user.k".to_vec(), value: b"v".to_vec() }],
    }
}

fn params() -> ChunkParams {
    ChunkParams { min: 16384, avg: 65536, max: 262144 }
}

/// One fixed message of every kind, in registry order.
fn samples() -> Vec<Message> {
    vec![
        Hello { version: 2, features: 0, agent: "xfer/0.1.0".into() }.into(),
        ErrorMsg { code: CloseCode::NotFound as u32, message: "no such tree".into() }.into(),
        Open {
            direction: Direction::Push,
            path: b"srv/data".to_vec(),
            delete: true,
            checksum: false,
            remembered_root: Some(id(0xaa)),
            tags: vec![Tag { key: "project".into(), value: "web".into() }],
            at: None,
            source_host: "laptop".into(),
            source_path: "/home/a".into(),
            forget: vec![],
        }
        .into(),
        Opened { root: id(0x11), remembered: false }.into(),
        ListDir { dir: b"src".to_vec() }.into(),
        Listing {
            dir: b"src".to_vec(),
            children: vec![
                ChildDigest { name: b"lib.rs".to_vec(), digest: id(1), is_dir: false },
                ChildDigest { name: b"bin".to_vec(), digest: id(2), is_dir: true },
            ],
            more: false,
        }
        .into(),
        GetFiles { paths: vec![b"a".to_vec(), b"b/c".to_vec()] }.into(),
        FileInfos {
            files: vec![FileInfo {
                path: b"a".to_vec(),
                size: 70000,
                hash: id(3),
                params: params(),
                chunks: vec![ChunkRef { id: id(4), len: 65536 }, ChunkRef { id: id(5), len: 4464 }],
                continued: false,
            }],
            more: false,
        }
        .into(),
        HasChunks { ids: vec![id(6), id(7)] }.into(),
        Have { bits: vec![0b01] }.into(),
        Mkdir { path: b"d".to_vec(), mode: 0o2755, mtime: mtime(), attrs: attrs() }.into(),
        WriteFile {
            file: 3,
            path: b"a".to_vec(),
            mode: 0o644,
            mtime: mtime(),
            size: 70000,
            hash: id(8),
            params: params(),
            list: ChunkList::Edit(vec![
                ListEdit::Keep { from: 0, count: 1 },
                ListEdit::New(vec![ChunkRef { id: id(9), len: 4464 }]),
            ]),
            more: true,
            attrs: Attrs::default(),
        }
        .into(),
        MoreChunks { file: 3, list: ChunkList::Full(vec![ChunkRef { id: id(10), len: 100 }]), more: false }.into(),
        Symlink { path: b"l".to_vec(), target: b"../t".to_vec(), mtime: mtime(), attrs: Attrs::default() }.into(),
        SetMeta { path: b"a".to_vec(), mode: 0o4755, mtime: Mtime { secs: -1, nanos: 0 }, attrs: attrs() }.into(),
        Delete { path: b"old".to_vec() }.into(),
        Link { path: b"b/x".to_vec(), target: b"a".to_vec(), size: 70000, hash: id(8) }.into(),
        NeedChunk { file: 3, index: 1, signature: Some(vec![0x80, 0x02, 6, 20, 0xff]) }.into(),
        RefineRequest { file: 3, index: 1, ranges: vec![1, 0, 200, 1] }.into(),
        FineSignatures { file: 3, index: 1, signatures: vec![vec![0], vec![1, 2]] }.into(),
        ChunkData { file: 3, index: 1, codec: CODEC_RAW, decoded_len: 4, payload: b"data".to_vec() }.into(),
        Commit { seq: 1 }.into(),
        Committed { seq: 1, files: 10, bytes: 1 << 20 }.into(),
        FileFailed { file: 3, code: CloseCode::NoSpace as u32, message: "disk full".into() }.into(),
        Done.into(),
        Summary {
            files_written: 1,
            dirs_created: 2,
            symlinks_written: 3,
            meta_updated: 4,
            deleted: 5,
            failed: 6,
            bytes_written: 7,
            bytes_received: 8,
            chunks_received: 9,
            chunks_reused: 10,
            chunks_delta: 11,
            meta_kept: 12,
        }
        .into(),
        SnapshotList {
            snapshots: vec![SnapshotEntry {
                id: id(0x21),
                time: 1_700_000_000,
                nanos: 7,
                tree: "/site".into(),
                client: "xfer:ab".into(),
                host: "laptop".into(),
                source: "/home/a".into(),
                tags: vec![Tag { key: "k".into(), value: "v".into() }],
                partial: false,
                files: 3,
                dirs: 1,
                bytes: 300,
                root: id(0x22),
            }],
            more: false,
        }
        .into(),
        Forgotten { count: 2 }.into(),
        Pruned {
            packs_deleted: 1,
            bytes_freed: 2,
            packs_doomed: 3,
            packs_repacked: 4,
            packs_reinstated: 5,
            bytes_after: 6,
        }
        .into(),
        StoreCosts { puts: 1, gets: 2, lists: 3, deletes: 4, bytes_put: 5, bytes_got: 6, keys_listed: 7 }.into(),
        DryRun.into(),
    ]
}

/// Frame bytes of [`samples`], as hex: written once, then frozen. A change
/// here is a wire change: update SPEC.md and consider the ALPN.
const GOLDEN: &[(Kind, &str)] = &[
    (Kind::Hello, "0e0000000102000a786665722f302e312e30"),
    (Kind::Error, "0f00000002040c6e6f20737563682074726565"),
    (Kind::Open, "4c0000000800087372762f64617461010001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa010770726f6a6563740377656200066c6170746f70072f686f6d652f6100"),
    (Kind::Opened, "2200000009111111111111111111111111111111111111111111111111111111111111111100"),
    (Kind::ListDir, "050000001003737263"),
    (Kind::Listing, "54000000110373726302066c69622e72730101010101010101010101010101010101010101010101010101010101010101000362696e02020202020202020202020202020202020202020202020202020202020202020100"),
    (Kind::GetFiles, "080000001202016103622f63"),
    (Kind::FileInfos, "7800000013010161f0a20403030303030303030303030303030303030303030303030303030303030303038080018080048080100204040404040404040404040404040404040404040404040404040404040404048080040505050505050505050505050505050505050505050505050505050505050505f0220000"),
    (Kind::HasChunks, "42000000180206060606060606060606060606060606060606060606060606060606060606060707070707070707070707070707070707070707070707070707070707070707"),
    (Kind::Have, "03000000190101"),
    (Kind::Mkdir, "27000000200164ed0b80c49fd50c959aef3ae8076405616c6963650575736572730106757365722e6b0176"),
    (Kind::WriteFile, "6a00000021030161a40380c49fd50c959aef3af0a2040808080808080808080808080808080808080808080808080808080808080808808001808004808010020200000101010909090909090909090909090909090909090909090909090909090909090909f022010000000000"),
    (Kind::MoreChunks, "26000000220301010a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a6400"),
    (Kind::Symlink, "1600000023016c042e2e2f7480c49fd50c959aef3a0000000000"),
    (Kind::SetMeta, "20000000240161ed130100e8076405616c6963650575736572730106757365722e6b0176"),
    (Kind::Delete, "0500000025036f6c64"),
    (Kind::Link, "2a0000002603622f780161f0a2040808080808080808080808080808080808080808080808080808080808080808"),
    (Kind::NeedChunk, "0a000000300301010580020614ff"),
    (Kind::RefineRequest, "08000000310301040100c801"),
    (Kind::FineSignatures, "09000000320301020100020102"),
    (Kind::ChunkData, "0a00000033030100040464617461"),
    (Kind::Commit, "020000004001"),
    (Kind::Committed, "0600000041010a808040"),
    (Kind::FileFailed, "0d000000420308096469736b2066756c6c"),
    (Kind::Done, "0100000043"),
    (Kind::Summary, "0d000000440102030405060708090a0b0c"),
    (Kind::SnapshotList, "700000004801212121212121212121212121212121212121212121212121212121212121212180c49fd50c07052f7369746507786665723a6162066c6170746f70072f686f6d652f6101016b0176000301ac02222222222222222222222222222222222222222222222222222222222222222200"),
    (Kind::Forgotten, "020000004902"),
    (Kind::Pruned, "070000004a010203040506"),
    (Kind::StoreCosts, "080000008001020304050607"),
    (Kind::DryRun, "0100000081"),
];

#[test]
fn golden_frames() {
    let samples = samples();
    assert_eq!(samples.len(), GOLDEN.len());
    for (m, (kind, hex)) in samples.iter().zip(GOLDEN) {
        assert_eq!(m.kind(), *kind);
        let frame = m.to_frame();
        assert_eq!(to_hex(&frame), *hex, "{kind}");
        assert_eq!(frame::parse(&frame).unwrap(), *m, "{kind}");
    }
}

/// The zstd stream feature as it travels: its bit in `Hello` beside the
/// others, and a `ChunkData` of codec 4 (framed like any other; what its
/// payload holds is the codec's business, SPEC.md section 13).
#[test]
fn golden_zstd_stream_feature() {
    assert_eq!((FEATURE_ZSTD_STREAM, KNOWN_FEATURES), (4, 7));
    assert_eq!(codec::CODEC_ZSTD_STREAM, 4);
    let frames: [(Message, &str); 2] = [
        (
            Hello { version: PROTOCOL_VERSION, features: KNOWN_FEATURES, agent: "xfer/0.1.0".into() }.into(),
            "0e0000000103070a786665722f302e312e30",
        ),
        (
            ChunkData { file: 3, index: 1, codec: codec::CODEC_ZSTD_STREAM, decoded_len: 4, payload: b"data".to_vec() }
                .into(),
            "0a00000033030104040464617461",
        ),
    ];
    for (message, hex) in frames {
        let frame = message.to_frame();
        assert_eq!(to_hex(&frame), hex, "{}", message.kind());
        assert_eq!(frame::parse(&frame).unwrap(), message);
    }
    // The codec exists only with the feature in effect.
    assert!(!codec::codec_allowed(codec::CODEC_ZSTD_STREAM, 0));
    assert!(!codec::codec_allowed(codec::CODEC_ZSTD_STREAM, FEATURE_STORE_COSTS | FEATURE_DRY_RUN));
    assert!(codec::codec_allowed(codec::CODEC_ZSTD_STREAM, FEATURE_ZSTD_STREAM));
    for known in codec::CODECS {
        assert!(codec::codec_allowed(known, 0));
    }
    assert!((5..=u8::MAX).all(|other| !codec::codec_allowed(other, KNOWN_FEATURES)));
    // The limits SPEC.md states.
    assert_eq!((MAX_ZSTD_STREAM_WINDOW_LOG, MAX_ZSTD_STREAMS), (22, 4));
}

#[test]
fn golden_covers_every_kind() {
    let kinds: Vec<Kind> = GOLDEN.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, Kind::ALL);
}

#[test]
fn golden_frames_truncated_are_incomplete() {
    for m in samples() {
        let frame = m.to_frame();
        for n in 0..frame.len() {
            let prefix = &frame[..n];
            assert_eq!(frame::check(prefix).unwrap(), None, "{} prefix {n}", m.kind());
            assert!(frame::decode(prefix).unwrap().is_none());
            assert!(matches!(frame::parse(prefix), Err(DecodeError::UnexpectedEnd { .. })), "{} prefix {n}", m.kind());
        }
    }
}

#[test]
fn golden_bodies_truncated_are_errors() {
    // A frame whose length field is rewritten to cover only part of the
    // body: complete as a frame, malformed as a message. Never a panic.
    for m in samples() {
        let frame = m.to_frame();
        for body_len in 0..frame.len() - HEADER_LEN {
            let mut short = Vec::new();
            frame::encode_raw(frame[4], &frame[HEADER_LEN..HEADER_LEN + body_len], &mut short);
            assert_eq!(frame::check(&short).unwrap(), Some(short.len()));
            // Done has an empty body, so nothing shorter exists; every
            // other truncated body must fail.
            assert!(frame::parse(&short).is_err(), "{} body_len {body_len}", m.kind());
        }
    }
}

#[test]
fn frame_oversize_refused_from_header() {
    let len = MAX_FRAME_LEN + 1;
    let mut buf = len.to_le_bytes().to_vec();
    // Only the length field has arrived: refused already.
    let err = frame::check(&buf).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooLarge { len: l, max } if l == u64::from(len) && max == u64::from(MAX_FRAME_LEN))
    );
    assert_eq!(err.close_code(), CloseCode::TooLarge);
    buf.push(Kind::ChunkData as u8);
    assert!(matches!(frame::check(&buf), Err(DecodeError::TooLarge { .. })));
    assert!(matches!(frame::parse(&buf), Err(DecodeError::TooLarge { .. })));
    assert!(matches!(frame::check(&u32::MAX.to_le_bytes()), Err(DecodeError::TooLarge { .. })));
    // The largest allowed length is merely incomplete.
    assert_eq!(frame::check(&MAX_FRAME_LEN.to_le_bytes()).unwrap(), None);
}

#[test]
fn frame_unknown_kind_refused() {
    for kind in [0u8, 3, 7, 10, 20, 39, 52, 69, 127, 130, 255] {
        let mut buf = Vec::new();
        frame::encode_raw(kind, &[0; 8], &mut buf);
        // Refused as soon as the kind byte arrives, before the body.
        assert!(matches!(frame::check(&buf[..HEADER_LEN]), Err(DecodeError::UnknownKind(k)) if k == kind));
        assert!(matches!(frame::parse(&buf), Err(DecodeError::UnknownKind(k)) if k == kind));
        assert_eq!(frame::parse(&buf).unwrap_err().close_code(), CloseCode::ProtocolError);
    }
}

#[test]
fn frame_limits_refused() {
    let cases: Vec<(Message, &str)> = vec![
        (ListDir { dir: vec![b'a'; MAX_PATH_LEN + 1] }.into(), "dir"),
        (
            Listing {
                dir: vec![],
                children: vec![ChildDigest { name: vec![b'n'; MAX_NAME_LEN + 1], digest: id(0), is_dir: false }],
                more: false,
            }
            .into(),
            "name",
        ),
        (HasChunks { ids: vec![id(0); MAX_IDS_PER_BATCH + 1] }.into(), "ids"),
        (GetFiles { paths: vec![vec![b'p']; MAX_FILES_PER_MESSAGE + 1] }.into(), "paths"),
        (NeedChunk { file: 0, index: 0, signature: Some(vec![0; MAX_SIGNATURE_LEN + 1]) }.into(), "signature"),
        (
            ChunkData {
                file: 0,
                index: 0,
                codec: CODEC_RAW,
                decoded_len: 1,
                payload: vec![0; MAX_PAYLOAD_LEN as usize + 1],
            }
            .into(),
            "payload",
        ),
        (
            MoreChunks {
                file: 0,
                list: ChunkList::Full(vec![ChunkRef { id: id(0), len: 1 }; MAX_CHUNK_REFS_PER_MESSAGE + 1]),
                more: false,
            }
            .into(),
            "chunk list items",
        ),
        (Hello { version: 1, features: 0, agent: "x".repeat(MAX_TEXT_LEN + 1) }.into(), "agent"),
        (Link { path: b"l".to_vec(), target: vec![b't'; MAX_PATH_LEN + 1], size: 0, hash: id(0) }.into(), "target"),
        (open_tagged(vec![Tag { key: "k".into(), value: "v".into() }; MAX_TAGS + 1]), "tags"),
        (set_meta_with(Attrs { user: vec![b'u'; MAX_OWNER_NAME_LEN + 1], ..attrs() }), "user name"),
        (set_meta_with(Attrs { group: vec![b'g'; MAX_OWNER_NAME_LEN + 1], ..attrs() }), "group name"),
        (set_meta_with(Attrs { xattrs: numbered_xattrs(MAX_XATTRS + 1, 1), ..attrs() }), "xattrs"),
        (set_meta_with(Attrs { xattrs: numbered_xattrs(1, MAX_XATTR_VALUE_LEN + 1), ..attrs() }), "xattr value"),
        (set_meta_with(Attrs { xattrs: numbered_xattrs(5, MAX_XATTR_VALUE_LEN), ..attrs() }), "xattr bytes"),
        (
            set_meta_with(Attrs {
                xattrs: vec![Xattr { name: vec![b'n'; MAX_XATTR_NAME_LEN + 1], value: vec![] }],
                ..attrs()
            }),
            "xattr name",
        ),
    ];
    for (m, field) in cases {
        let err = m.validate().unwrap_err();
        assert!(matches!(err, DecodeError::Limit { what, .. } if what == field), "{err}");
        // Encode the body bypassing the debug assertion in frame::encode.
        let frame = raw_frame(&m);
        let err = frame::parse(&frame).unwrap_err();
        assert!(matches!(err, DecodeError::Limit { kind, what, .. } if kind == m.kind() && what == field), "{err}");
    }
}

fn set_meta_with(attrs: Attrs) -> Message {
    SetMeta { path: b"f".to_vec(), mode: 0o644, mtime: mtime(), attrs }.into()
}

/// `count` xattrs named `user.00000`... in order, each with a value of `len` bytes.
fn numbered_xattrs(count: usize, len: usize) -> Vec<Xattr> {
    (0..count).map(|n| Xattr { name: format!("user.{n:05}").into_bytes(), value: vec![7; len] }).collect()
}

/// Xattr names must be sorted, unique, non-empty and free of NUL bytes, so
/// a receiver never applies one twice or one the kernel would cut short.
#[test]
fn bad_xattrs_refused() {
    let x = |name: &[u8]| Xattr { name: name.to_vec(), value: b"v".to_vec() };
    assert!(set_meta_with(attrs()).validate().is_ok());
    for bad in [vec![x(b"user.b"), x(b"user.a")], vec![x(b"user.a"), x(b"user.a")], vec![x(b"")], vec![x(b"user.\0a")]]
    {
        let m = set_meta_with(Attrs { xattrs: bad.clone(), ..attrs() });
        assert!(matches!(m.validate(), Err(DecodeError::Invalid { .. })), "{bad:?} accepted");
        assert!(frame::parse(&raw_frame(&m)).is_err(), "{bad:?} decoded");
    }
    // The largest allowed attributes still fit a frame, on every message that carries them.
    let most = Attrs {
        user: vec![b'u'; MAX_OWNER_NAME_LEN],
        group: vec![b'g'; MAX_OWNER_NAME_LEN],
        xattrs: numbered_xattrs(4, MAX_XATTR_VALUE_LEN - 16),
        ..attrs()
    };
    roundtrip_impl(&set_meta_with(most.clone()));
    let link =
        Symlink { path: vec![b'p'; MAX_PATH_LEN], target: vec![b't'; MAX_PATH_LEN], mtime: mtime(), attrs: most };
    roundtrip_impl(&link.into());
}

fn open_tagged(tags: Vec<Tag>) -> Message {
    Open { tags, ..open_push() }.into()
}

fn open_push() -> Open {
    Open {
        direction: Direction::Push,
        path: vec![],
        delete: false,
        checksum: false,
        remembered_root: None,
        tags: vec![],
        at: None,
        source_host: String::new(),
        source_path: String::new(),
        forget: vec![],
    }
}

/// The history fields of `Open` are bounded, free of control characters,
/// and only where their direction uses them.
#[test]
fn bad_open_history_fields_refused() {
    let pull = |at: &str| Open { direction: Direction::Pull, at: Some(at.into()), ..open_push() };
    assert!(Message::from(pull("latest")).validate().is_ok());
    let forget = Open { direction: Direction::Forget, forget: vec![id(1); MAX_FORGET_IDS], ..open_push() };
    assert!(Message::from(forget.clone()).validate().is_ok());
    let bad = [
        pull(&"x".repeat(MAX_SELECTOR_LEN + 1)),
        pull("2026-01-01\n"),
        Open { at: Some("latest".into()), ..open_push() },
        Open { source_host: "h".repeat(MAX_HOST_LEN + 1), ..open_push() },
        Open { source_host: "a\tb".into(), ..open_push() },
        Open { source_path: "p".repeat(MAX_PATH_LEN + 1), ..open_push() },
        Open { forget: vec![id(1)], ..open_push() },
        Open { forget: vec![id(1); MAX_FORGET_IDS + 1], ..forget },
    ];
    for open in bad {
        let m = Message::from(open.clone());
        assert!(m.validate().is_err(), "{open:?} accepted");
        assert!(frame::parse(&raw_frame(&m)).is_err(), "{open:?} decoded");
    }
}

/// A snapshot list over its count or with a control character in a label
/// is refused.
#[test]
fn bad_snapshot_lists_refused() {
    let entry = SnapshotEntry {
        id: id(1),
        time: 0,
        nanos: 999_999_999,
        tree: "/".into(),
        client: String::new(),
        host: "h".into(),
        source: "/s".into(),
        tags: vec![],
        partial: true,
        files: 0,
        dirs: 1,
        bytes: 0,
        root: id(2),
    };
    let list = |snapshots: Vec<SnapshotEntry>| Message::from(SnapshotList { snapshots, more: false });
    assert!(list(vec![entry.clone(); MAX_SNAPSHOTS_PER_MESSAGE]).validate().is_ok());
    let bad = [
        list(vec![entry.clone(); MAX_SNAPSHOTS_PER_MESSAGE + 1]),
        list(vec![SnapshotEntry { host: "a\u{7}".into(), ..entry.clone() }]),
        list(vec![SnapshotEntry { tree: "t".repeat(MAX_PATH_LEN + 1), ..entry.clone() }]),
        list(vec![SnapshotEntry { nanos: 1_000_000_000, ..entry.clone() }]),
        list(vec![SnapshotEntry { tags: vec![Tag { key: "=".into(), value: String::new() }], ..entry }]),
    ];
    for m in bad {
        assert!(m.validate().is_err());
        assert!(frame::parse(&raw_frame(&m)).is_err());
    }
}

/// A tag with `=` in its key, an empty key, a control character or an
/// over-long value is refused, as the audit log must be able to trust them.
#[test]
fn bad_tags_refused() {
    let tag = |key: &str, value: &str| Tag { key: key.into(), value: value.into() };
    assert!(open_tagged(vec![tag("project", "web")]).validate().is_ok());
    for bad in [tag("a=b", "c"), tag("", "c"), tag("k", "line\nbreak"), tag("k", &"v".repeat(MAX_TAG_LEN + 1))] {
        let m = open_tagged(vec![bad.clone()]);
        assert!(matches!(m.validate(), Err(DecodeError::Invalid { .. })), "{bad:?} accepted");
        assert!(frame::parse(&raw_frame(&m)).is_err(), "{bad:?} decoded");
    }
}

/// Frames `m` without validating it (frame::encode asserts validity in
/// debug builds).
fn raw_frame(m: &Message) -> Vec<u8> {
    let body = match m {
        Message::ListDir(b) => postcard_body(b),
        Message::Listing(b) => postcard_body(b),
        Message::HasChunks(b) => postcard_body(b),
        Message::GetFiles(b) => postcard_body(b),
        Message::NeedChunk(b) => postcard_body(b),
        Message::ChunkData(b) => postcard_body(b),
        Message::MoreChunks(b) => postcard_body(b),
        Message::Hello(b) => postcard_body(b),
        Message::Open(b) => postcard_body(b),
        Message::SetMeta(b) => postcard_body(b),
        Message::Link(b) => postcard_body(b),
        Message::SnapshotList(b) => postcard_body(b),
        other => panic!("add {:?} to raw_frame", other.kind()),
    };
    let mut out = Vec::new();
    frame::encode_raw(m.kind() as u8, &body, &mut out);
    out
}

fn postcard_body<T: serde::Serialize>(body: &T) -> Vec<u8> {
    postcard::to_stdvec(body).unwrap()
}

#[test]
fn frame_invalid_bodies_refused() {
    // Bool byte 2, Option tag 2, enum tag past the last variant.
    let mut buf = Vec::new();
    frame::encode_raw(Kind::Opened as u8, &[&[0u8; 32][..], &[2]].concat(), &mut buf);
    assert!(matches!(frame::parse(&buf), Err(DecodeError::Body { kind: Kind::Opened, .. })));
    buf.clear();
    frame::encode_raw(Kind::Open as u8, &[2, 0, 0, 0, 0], &mut buf);
    assert!(matches!(frame::parse(&buf), Err(DecodeError::Body { kind: Kind::Open, .. })));
    buf.clear();
    // A count far beyond the bytes present: refused without allocating it.
    frame::encode_raw(Kind::HasChunks as u8, &[0xff, 0xff, 0xff, 0xff, 0x0f], &mut buf);
    assert!(matches!(frame::parse(&buf), Err(DecodeError::Body { kind: Kind::HasChunks, .. })));
    buf.clear();
    frame::encode_raw(Kind::GetFiles as u8, &[0x01, 0xff, 0xff, 0xff, 0x0f, 1, 2], &mut buf);
    assert!(matches!(frame::parse(&buf), Err(DecodeError::Body { kind: Kind::GetFiles, .. })));
    buf.clear();
    // Invalid UTF-8 in a string.
    frame::encode_raw(Kind::Hello as u8, &[1, 0, 1, 0xff], &mut buf);
    assert!(matches!(frame::parse(&buf), Err(DecodeError::Body { kind: Kind::Hello, .. })));
    buf.clear();
    // Implied list in a continuation.
    frame::encode_raw(Kind::MoreChunks as u8, &[0, 0, 0], &mut buf);
    assert!(matches!(frame::parse(&buf), Err(DecodeError::Invalid { kind: Kind::MoreChunks, .. })));
}

// ---------------------------------------------------------------------------
// Roundtrip property tests

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>()
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

/// Text without control characters, as labels must be.
fn label() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,40}"
}

fn mtime_s() -> impl Strategy<Value = Mtime> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Mtime { secs, nanos })
}

fn params_s() -> impl Strategy<Value = ChunkParams> {
    (0..=MAX_CHUNK_LEN, 0..=MAX_CHUNK_LEN, 0..=MAX_CHUNK_LEN).prop_map(|(a, b, c)| {
        let mut v = [a, b, c];
        v.sort_unstable();
        ChunkParams { min: v[0], avg: v[1], max: v[2] }
    })
}

fn chunk_ref() -> impl Strategy<Value = ChunkRef> {
    (hash(), 0..=MAX_CHUNK_LEN).prop_map(|(id, len)| ChunkRef { id, len })
}

fn refs(max: usize) -> impl Strategy<Value = Vec<ChunkRef>> {
    vec(chunk_ref(), 0..=max)
}

fn list_edit() -> impl Strategy<Value = ListEdit> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(from, count)| ListEdit::Keep { from, count }),
        refs(3).prop_map(ListEdit::New),
    ]
}

fn chunk_list(implied: bool) -> BoxedStrategy<ChunkList> {
    let lists = prop_oneof![refs(6).prop_map(ChunkList::Full), vec(list_edit(), 0..6).prop_map(ChunkList::Edit)];
    if implied {
        prop_oneof![Just(ChunkList::Implied), lists].boxed()
    } else {
        lists.boxed()
    }
}

fn attrs_s() -> impl Strategy<Value = Attrs> {
    (any::<u32>(), any::<u32>(), bytes(8), bytes(8), vec((bytes(12), bytes(16)), 0..4)).prop_map(
        |(uid, gid, user, group, xattrs)| {
            // Valid names: non-empty, no NUL, sorted and unique.
            let mut xattrs: Vec<Xattr> = xattrs
                .into_iter()
                .map(|(name, value)| {
                    let mut name: Vec<u8> = name.into_iter().filter(|&b| b != 0).collect();
                    name.insert(0, b'u');
                    Xattr { name, value }
                })
                .collect();
            xattrs.sort_by(|a, b| a.name.cmp(&b.name));
            xattrs.dedup_by(|a, b| a.name == b.name);
            Attrs { uid, gid, user, group, xattrs }
        },
    )
}

fn write_file() -> impl Strategy<Value = WriteFile> {
    (
        any::<u32>(),
        bytes(16),
        any::<u32>(),
        mtime_s(),
        any::<u64>(),
        hash(),
        params_s(),
        chunk_list(true),
        any::<bool>(),
        attrs_s(),
    )
        .prop_map(|(file, path, mode, mtime, size, hash, params, list, more, attrs)| {
            let (size, more) =
                if list == ChunkList::Implied { (size % (u64::from(MAX_CHUNK_LEN) + 1), false) } else { (size, more) };
            WriteFile { file, path, mode, mtime, size, hash, params, list, more, attrs }
        })
}

fn file_info() -> impl Strategy<Value = FileInfo> {
    (bytes(16), any::<u64>(), hash(), params_s(), refs(4), any::<bool>()).prop_map(
        |(path, size, hash, params, chunks, continued)| FileInfo { path, size, hash, params, chunks, continued },
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), text())
            .prop_map(|(version, features, agent)| Hello { version, features, agent }.into()),
        (any::<u32>(), text()).prop_map(|(code, message)| ErrorMsg { code, message }.into()),
        (any::<bool>(), bytes(16), any::<bool>(), any::<bool>(), proptest::option::of(hash()), label(), label())
            .prop_map(|(push, path, delete, checksum, remembered_root, source_host, at)| Open {
                direction: if push { Direction::Push } else { Direction::Pull },
                path,
                delete,
                checksum,
                remembered_root,
                tags: Vec::new(),
                at: (!push).then_some(at),
                source_host,
                source_path: String::new(),
                forget: Vec::new(),
            }
            .into()),
        (bytes(16), vec(hash(), 0..4)).prop_map(|(path, forget)| Open {
            direction: Direction::Forget,
            forget,
            path,
            ..open_push()
        }
        .into()),
        (vec((hash(), any::<i64>(), label(), any::<bool>(), any::<[u64; 3]>()), 0..4), any::<bool>()).prop_map(
            |(records, more)| SnapshotList {
                snapshots: records
                    .into_iter()
                    .map(|(id, time, host, partial, [files, dirs, bytes])| SnapshotEntry {
                        id,
                        time,
                        nanos: (files % 1_000_000_000) as u32,
                        tree: "/t".into(),
                        client: String::new(),
                        host,
                        source: "/s".into(),
                        tags: vec![],
                        partial,
                        files,
                        dirs,
                        bytes,
                        root: id,
                    })
                    .collect(),
                more
            }
            .into()
        ),
        any::<u64>().prop_map(|count| Forgotten { count }.into()),
        any::<[u64; 6]>().prop_map(|c| Pruned {
            packs_deleted: c[0],
            bytes_freed: c[1],
            packs_doomed: c[2],
            packs_repacked: c[3],
            packs_reinstated: c[4],
            bytes_after: c[5],
        }
        .into()),
        any::<[u64; 7]>().prop_map(|c| StoreCosts {
            puts: c[0],
            gets: c[1],
            lists: c[2],
            deletes: c[3],
            bytes_put: c[4],
            bytes_got: c[5],
            keys_listed: c[6],
        }
        .into()),
        Just(DryRun.into()),
        (hash(), any::<bool>()).prop_map(|(root, remembered)| Opened { root, remembered }.into()),
        bytes(16).prop_map(|dir| ListDir { dir }.into()),
        (bytes(16), vec((bytes(12), hash(), any::<bool>()), 0..5), any::<bool>()).prop_map(|(dir, c, more)| Listing {
            dir,
            children: c.into_iter().map(|(name, digest, is_dir)| ChildDigest { name, digest, is_dir }).collect(),
            more
        }
        .into()),
        vec(bytes(16), 0..5).prop_map(|paths| GetFiles { paths }.into()),
        (vec(file_info(), 0..4), any::<bool>()).prop_map(|(files, more)| FileInfos { files, more }.into()),
        vec(hash(), 0..5).prop_map(|ids| HasChunks { ids }.into()),
        bytes(8).prop_map(|bits| Have { bits }.into()),
        (bytes(16), any::<u32>(), mtime_s(), attrs_s()).prop_map(|(path, mode, mtime, attrs)| Mkdir {
            path,
            mode,
            mtime,
            attrs
        }
        .into()),
        write_file().prop_map(Message::from),
        (any::<u32>(), chunk_list(false), any::<bool>())
            .prop_map(|(file, list, more)| MoreChunks { file, list, more }.into()),
        (bytes(16), bytes(16), mtime_s(), attrs_s()).prop_map(|(path, target, mtime, attrs)| Symlink {
            path,
            target,
            mtime,
            attrs
        }
        .into()),
        (bytes(16), any::<u32>(), mtime_s(), attrs_s()).prop_map(|(path, mode, mtime, attrs)| SetMeta {
            path,
            mode,
            mtime,
            attrs
        }
        .into()),
        bytes(16).prop_map(|path| Delete { path }.into()),
        (bytes(16), bytes(16), any::<u64>(), hash()).prop_map(|(path, target, size, hash)| Link {
            path,
            target,
            size,
            hash
        }
        .into()),
        (any::<u32>(), any::<u32>(), proptest::option::of(bytes(64))).prop_map(|(file, index, signature)| NeedChunk {
            file,
            index,
            signature
        }
        .into()),
        (any::<u32>(), any::<u32>(), bytes(32))
            .prop_map(|(file, index, ranges)| RefineRequest { file, index, ranges }.into()),
        (any::<u32>(), any::<u32>(), vec(bytes(16), 0..4)).prop_map(|(file, index, signatures)| FineSignatures {
            file,
            index,
            signatures
        }
        .into()),
        (any::<u32>(), any::<u32>(), any::<u8>(), 0..=MAX_CHUNK_LEN, bytes(64)).prop_map(
            |(file, index, codec, decoded_len, payload)| ChunkData { file, index, codec, decoded_len, payload }.into()
        ),
        any::<u64>().prop_map(|seq| Commit { seq }.into()),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(seq, files, bytes)| Committed { seq, files, bytes }.into()),
        (any::<u32>(), any::<u32>(), text())
            .prop_map(|(file, code, message)| FileFailed { file, code, message }.into()),
        Just(Done.into()),
        any::<[u64; 12]>().prop_map(|c| Summary {
            files_written: c[0],
            dirs_created: c[1],
            symlinks_written: c[2],
            meta_updated: c[3],
            deleted: c[4],
            failed: c[5],
            bytes_written: c[6],
            bytes_received: c[7],
            chunks_received: c[8],
            chunks_reused: c[9],
            chunks_delta: c[10],
            meta_kept: c[11],
        }
        .into()),
    ]
}

fn roundtrip_impl(m: &Message) {
    let frame = m.to_frame();
    assert_eq!(frame::check(&frame).unwrap(), Some(frame.len()));
    assert_eq!(frame[4], m.kind() as u8);
    let (back, n) = frame::decode(&frame).unwrap().unwrap();
    assert_eq!(n, frame.len());
    assert_eq!(&back, m);
}

fn truncation_impl(m: &Message, cut: usize) {
    let frame = m.to_frame();
    let prefix = &frame[..cut % frame.len()];
    assert_eq!(frame::check(prefix).unwrap(), None);
    assert!(frame::parse(prefix).is_err());
}

fn garbage_impl(bytes: &[u8]) {
    // Arbitrary input: any answer but a panic. A whole frame parses or errs.
    let mut rest = bytes;
    while let Ok(Some(n)) = frame::check(rest) {
        let _ = frame::parse(&rest[..n]);
        rest = &rest[n..];
    }
}

proptest! {
    #[test]
    fn roundtrip_proptest(m in message()) {
        roundtrip_impl(&m);
    }

    #[test]
    fn truncation_proptest(m in message(), cut in any::<usize>()) {
        truncation_impl(&m, cut);
    }

    #[test]
    fn garbage_proptest(kind in 0u8..80, body in bytes(64)) {
        let mut buf = Vec::new();
        frame::encode_raw(kind, &body, &mut buf);
        garbage_impl(&buf);
    }

    #[test]
    fn garbage_raw_proptest(buf in bytes(128)) {
        garbage_impl(&buf);
    }
}

#[test]
fn roundtrip_cases() {
    for m in samples() {
        roundtrip_impl(&m);
    }
    // Extremes of each limit still roundtrip.
    roundtrip_impl(&HasChunks { ids: vec![id(1); MAX_IDS_PER_BATCH] }.into());
    roundtrip_impl(
        &ChunkData {
            file: u32::MAX,
            index: u32::MAX,
            codec: u8::MAX,
            decoded_len: MAX_CHUNK_LEN,
            payload: vec![7; MAX_PAYLOAD_LEN as usize],
        }
        .into(),
    );
    roundtrip_impl(
        &Symlink {
            path: vec![b'p'; MAX_PATH_LEN],
            target: vec![b't'; MAX_PATH_LEN],
            mtime: mtime(),
            attrs: Attrs::default(),
        }
        .into(),
    );
    roundtrip_impl(
        &Listing {
            dir: vec![b'd'; MAX_PATH_LEN],
            children: vec![
                ChildDigest { name: vec![b'n'; MAX_NAME_LEN], digest: id(2), is_dir: true };
                MAX_CHILDREN_PER_LISTING
            ],
            more: true,
        }
        .into(),
    );
}
