//! Any bytes given to the index parser: an error or a valid index, never a panic; a parsed
//! index re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtguard_repo::format::Index;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = Index::decode("fuzz.idx", data) {
        assert_eq!(idx.encode(), data);
    }
});
