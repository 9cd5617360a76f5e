//! Any bytes given to the manifest and config parsers: an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtguard_repo::format::Manifest;
use virtguard_repo::RepoConfig;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::decode("fuzz/manifest.json", data);
    let _ = RepoConfig::decode("fuzz", data);
});
