//! Every CronJob in `deploy/` runs the `virtguard` image with arguments that the CLI of this
//! checkout accepts: a renamed or removed flag breaks this test, not a user's night run.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use clap::Parser;
use std::path::{Path, PathBuf};
use virtguard::cli::Cli;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// (file, container name, args) of every container whose image is `virtguard`.
fn virtguard_containers() -> Vec<(PathBuf, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut dirs = vec![deploy_dir()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
                let Some(cs) = v
                    .pointer("/spec/jobTemplate/spec/template/spec/containers")
                    .and_then(|c| c.as_array())
                else {
                    continue;
                };
                for c in cs {
                    if c["image"] != "virtguard" {
                        continue;
                    }
                    let args = c["args"]
                        .as_array()
                        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                        .unwrap_or_default();
                    out.push((p.clone(), c["name"].as_str().unwrap().to_string(), args));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_cronjob_runs_a_command_the_cli_accepts() {
    let found = virtguard_containers();
    let names: Vec<&str> = found.iter().map(|(_, n, _)| n.as_str()).collect();
    for want in ["backup", "maintain", "drill"] {
        assert!(
            names.contains(&want),
            "no CronJob container {want}: {names:?}"
        );
    }
    for (file, name, args) in &found {
        let argv = std::iter::once("virtguard".to_string()).chain(args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!(
                "{} container {name}: args {args:?} rejected:\n{e}",
                file.display()
            );
        }
    }
    // The check itself rejects a flag the CLI does not have.
    assert!(Cli::try_parse_from(["virtguard", "maintain", "--verify-every=7"]).is_err());
}
