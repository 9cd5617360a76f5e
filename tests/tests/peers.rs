//! Proves the peer support works with one real round trip each: an object PUT/GET through
//! aws-sdk-s3 against s3s-fs (with SigV4 checked by the server), and a real Prometheus scraping a
//! tiny /metrics endpoint served by this test.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use virtguard_e2e::{require_peer, Prometheus, PrometheusConfig, S3Server};

fn s3_client(s3: &S3Server, secret: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .endpoint_url(&s3.endpoint)
        .region(Region::new(s3.region.clone()))
        .credentials_provider(Credentials::new(
            &s3.access_key,
            secret,
            None,
            None,
            "virtguard-test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

#[tokio::test]
async fn s3s_fs_object_round_trip() {
    let s3 = require_peer!(S3Server::start());
    let client = s3_client(&s3, &s3.secret_key);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    client
        .put_object()
        .bucket(&s3.bucket)
        .key("dir/object.bin")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("PUT to s3s-fs");
    let got = client
        .get_object()
        .bucket(&s3.bucket)
        .key("dir/object.bin")
        .send()
        .await
        .expect("GET from s3s-fs")
        .body
        .collect()
        .await
        .expect("read body")
        .into_bytes();
    assert_eq!(got.len(), body.len());
    assert!(
        got == body,
        "object read back differs from what was written"
    );
    // The object really is on the server's disk, under <root>/<bucket>/<key>.
    let on_disk = std::fs::read(s3.data_dir().join(&s3.bucket).join("dir/object.bin"))
        .expect("object file in s3s-fs data dir");
    assert_eq!(on_disk, body);

    // The server checks signatures: a wrong secret is refused.
    let bad = s3_client(&s3, "not-the-secret");
    let err = bad
        .get_object()
        .bucket(&s3.bucket)
        .key("dir/object.bin")
        .send()
        .await;
    assert!(
        err.is_err(),
        "a request signed with a wrong secret must fail"
    );
    // And Debug never shows the secret.
    assert!(!format!("{s3:?}").contains(&s3.secret_key));
}

/// Serves a fixed exposition on a local port until the test ends.
fn serve_fixture(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fixture");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            // Read the request head.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
        }
    });
    port
}

#[test]
fn prometheus_scrapes_a_local_endpoint() {
    let port = serve_fixture(
        "# HELP virtguard_fixture_value A fixture gauge.\n# TYPE virtguard_fixture_value gauge\nvirtguard_fixture_value{name=\"vm1\",namespace=\"default\"} 42\n",
    );
    let prom = require_peer!(Prometheus::start(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{port}")],
        ..Default::default()
    }));
    let result = prom
        .wait_for_result(
            "virtguard_fixture_value{namespace=\"default\",name=\"vm1\"}",
            Duration::from_secs(30),
        )
        .expect("Prometheus scraped the fixture");
    assert_eq!(result[0]["value"][1], "42", "result: {result}");
    let up = prom.query("up{job=\"virtguard\"}").expect("query up");
    assert_eq!(up[0]["value"][1], "1", "up: {up}");
}
