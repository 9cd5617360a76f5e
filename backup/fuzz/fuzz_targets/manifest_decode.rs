//! Any bytes given to the manifest and config parsers: an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtguard::repo::format::Manifest;
use virtguard::repo::RepoConfig;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::decode("fuzz/manifest.json", data);
    let _ = RepoConfig::decode("fuzz", data);
});
