//! Test support: a real s3s-fs server on 127.0.0.1 and an HTTP fault-injecting proxy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod cluster;

/// Sends SIGTERM to a running `virtguard` and waits for it (blocking this tokio worker only, so
/// an in-process sim keeps serving): its status and outputs.
pub fn sigterm_and_wait(child: Child) -> Output {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -TERM {}", child.id());
    tokio::task::block_in_place(|| child.wait_with_output()).unwrap()
}

/// A finished command's status and both outputs, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub const ACCESS_KEY: &str = "vgtestaccess";
pub const SECRET_KEY: &str = "vgtestsecret-do-not-print-1234";
pub const BUCKET: &str = "vgbucket";

/// Finds s3s-fs, or returns None after printing SKIP when VIRTGUARD_ALLOW_SKIP=1; panics otherwise.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("S3S_FS").map(PathBuf::from),
        std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin/s3s-fs")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs")),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.exists()) {
        return Some(p);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.exists())
    }) {
        return Some(p);
    }
    if std::env::var("VIRTGUARD_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!(
            "SKIP: s3s-fs not found (cargo install s3s-fs@0.14.1 --features binary --locked)"
        );
        return None;
    }
    panic!("s3s-fs not found: install it with `cargo install s3s-fs@0.14.1 --features binary --locked` (or set VIRTGUARD_ALLOW_SKIP=1)");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running s3s-fs with one bucket; killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> Option<S3Server> {
        let bin = s3s_fs_binary()?;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(S3Server { child, port, root });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the AWS credential env vars for the SDK in this process.
pub fn set_aws_env() {
    // Tests in one binary share the environment; every test sets the same values.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

/// What the proxy does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Status500,
    Status503,
    SlowDown,
    /// Close the connection without answering.
    Reset,
    /// Send the response head and half the body, then close.
    Truncate,
}

/// How the proxy picks faults.
#[derive(Debug, Clone, Copy)]
pub enum FaultPlan {
    /// Every `n`th request gets the next fault of the rotation.
    EveryNth(u64),
    /// Every PUT fails with 500, forever.
    AllPutsFail,
    /// Every PUT of a chunk (`/chunks/` in the path) fails with 500, forever.
    ChunkPutsFail,
    /// No fault: the proxy only records the requests.
    PassAll,
}

/// An HTTP/1.1 proxy in front of S3 that injects faults; one upstream connection per request.
pub struct FaultProxy {
    pub port: u16,
    pub faults_injected: Arc<AtomicUsize>,
    /// The request line (`METHOD /path?query HTTP/1.1`) of every request, in arrival order.
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const ROTATION: [Fault; 5] = [
    Fault::Status500,
    Fault::Status503,
    Fault::SlowDown,
    Fault::Reset,
    Fault::Truncate,
];

impl FaultProxy {
    pub async fn start(upstream: u16, plan: FaultPlan) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let f2 = faults.clone();
        let r2 = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let faults = f2.clone();
                let requests = r2.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(sock, upstream, plan, counter, faults, requests).await;
                });
            }
        });
        FaultProxy {
            port,
            faults_injected: faults,
            requests,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>, need: usize) -> std::io::Result<()> {
    while buf.len() < need {
        let mut tmp = [0u8; 65536];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(())
}

/// Reads one complete request (head + body, Content-Length or chunked) from `buf`/`sock`.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let Some(head_len) = read_head(sock, buf).await? else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let mut pos = head_len;
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            loop {
                if buf[pos..].windows(2).any(|w| w == b"\r\n") {
                    break;
                }
                fill(sock, buf, buf.len() + 1).await?;
            }
            let line_end = pos
                + buf[pos..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[pos..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            pos = line_end + 2;
            if size == 0 {
                // trailers until an empty line
                loop {
                    loop {
                        if buf[pos..].windows(2).any(|w| w == b"\r\n") {
                            break;
                        }
                        fill(sock, buf, buf.len() + 1).await?;
                    }
                    let end = pos
                        + buf[pos..]
                            .windows(2)
                            .position(|w| w == b"\r\n")
                            .unwrap_or(0);
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            fill(sock, buf, pos + size + 2).await?;
            pos += size + 2;
        }
    } else {
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        fill(sock, buf, head_len + len).await?;
        pos = head_len + len;
    }
    let req: Vec<u8> = buf.drain(..pos).collect();
    Ok(Some((head, req)))
}

async fn serve_conn(
    mut sock: TcpStream,
    upstream: u16,
    plan: FaultPlan,
    counter: Arc<AtomicU64>,
    faults: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    // One request per connection: every response carries `connection: close`.
    if let Some((head, req)) = read_request(&mut sock, &mut buf).await? {
        if let Ok(mut r) = requests.lock() {
            r.push(head.lines().next().unwrap_or_default().to_string());
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let is_put = head.starts_with("PUT ");
        let fault = match plan {
            FaultPlan::EveryNth(k) if n % k == 0 => ROTATION[((n / k) as usize) % ROTATION.len()],
            FaultPlan::AllPutsFail if is_put => Fault::Status500,
            FaultPlan::ChunkPutsFail if is_put && head.contains("/chunks/") => Fault::Status500,
            _ => Fault::Pass,
        };
        if fault != Fault::Pass {
            faults.fetch_add(1, Ordering::SeqCst);
        }
        let error = |status: &str, code: &str| {
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>");
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        match fault {
            Fault::Status500 => {
                sock.write_all(error("500 Internal Server Error", "InternalError").as_bytes())
                    .await?;
                return Ok(());
            }
            Fault::Status503 => {
                sock.write_all(error("503 Service Unavailable", "ServiceUnavailable").as_bytes())
                    .await?;
                return Ok(());
            }
            Fault::SlowDown => {
                sock.write_all(error("503 Slow Down", "SlowDown").as_bytes())
                    .await?;
                return Ok(());
            }
            Fault::Reset => return Ok(()),
            Fault::Pass | Fault::Truncate => {}
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
        up.write_all(&close_connection(&req)).await?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await?;
        let mut out = close_connection(&resp);
        if fault == Fault::Truncate {
            let head_end = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
                .unwrap_or(out.len());
            let body_len = out.len() - head_end;
            if body_len > 1 {
                out.truncate(head_end + body_len / 2);
            } else {
                let line_end = out
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map(|i| i + 2)
                    .unwrap_or(0);
                out.truncate(line_end);
            }
        }
        sock.write_all(&out).await?;
    }
    Ok(())
}

/// Replaces any Connection header of an HTTP message with `connection: close`.
fn close_connection(msg: &[u8]) -> Vec<u8> {
    let Some(head_end) = msg.windows(4).position(|w| w == b"\r\n\r\n") else {
        return msg.to_vec();
    };
    let head = String::from_utf8_lossy(&msg[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut out = String::new();
    if let Some(first) = lines.next() {
        out.push_str(first);
        out.push_str("\r\nconnection: close");
    }
    for l in lines {
        if l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str("\r\n");
        out.push_str(l);
    }
    let mut v = out.into_bytes();
    v.extend_from_slice(&msg[head_end..]);
    v
}

/// Pseudo-random, incompressible bytes (xorshift), different per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
