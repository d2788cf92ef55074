//! Fuzz target: `Manifest::decode` on arbitrary bytes (the client reads a
//! remembered manifest back from disk). Must not panic; a decoded manifest
//! must encode to bytes that decode to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_core::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode()).expect("re-encoded manifest decodes");
        assert_eq!(again, m);
    }
});
