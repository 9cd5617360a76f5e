//! Any bytes given to the chunk/object blob decoder (header, zstd, decryption): an error or
//! bytes of the length the header states, never a panic or an oversized allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtguard_repo::crypto::Crypto;
use virtguard_repo::format::{CHUNK_MAGIC, OBJECT_MAGIC};

fuzz_target!(|data: &[u8]| {
    let plain = Crypto::plain(3);
    if let Ok(raw) = plain.decode_blob(CHUNK_MAGIC, "chunks/00/fuzz", data) {
        assert!(raw.len() as u64 <= virtguard_repo::crypto::MAX_RAW_LEN);
    }
    let _ = plain.decode_blob(OBJECT_MAGIC, "fuzz", data);
});
