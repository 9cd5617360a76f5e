//! Serving a disk image file over HTTP, as both the export server ([`crate::export`]) and the
//! changed-block backup endpoint ([`crate::cbt`]) do: `Range: bytes=a-b|a-|-n` (206 +
//! `Content-Range`, 416 when unsatisfiable), a correct `Content-Length`, HEAD, a gzip stream, and
//! the `export-drop-after` fault (the connection drops after N bytes).
//!
//! Invariant: a leaf. It knows files and HTTP only, never the simulator's state, so the export and
//! CBT servers both use it without importing each other.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;

use crate::http::{full, text_response, Body};

/// Parse a single `bytes=` range against `len`. Ok(None) = whole file; Err = unsatisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let spec = h.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.saturating_sub(1))
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (s, e)
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// A raw image: the whole file or one `Range`, streamed; HEAD answers the headers only.
pub(crate) async fn serve_raw(
    path: PathBuf,
    range: Option<&str>,
    head: bool,
    drop_after: Option<u64>,
) -> Response<Body> {
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) => {
            let msg = format!("reading {}: {e}", path.display());
            return text_response(500, "text/plain", msg);
        }
    };
    let (start, end, partial) = match range.map(|r| parse_range(r, len)) {
        None | Some(Ok(None)) => (0, len.saturating_sub(1), false),
        Some(Ok(Some((s, e)))) => (s, e, true),
        Some(Err(())) => {
            let mut r = text_response(416, "text/plain", "range not satisfiable".to_string());
            if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let body: Body = if head || count == 0 {
        full(Vec::new())
    } else {
        file_stream(path, start, count, drop_after)
    };
    let mut r = Response::new(body);
    *r.status_mut() = if partial {
        hyper::StatusCode::PARTIAL_CONTENT
    } else {
        hyper::StatusCode::OK
    };
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        hyper::header::ACCEPT_RANGES,
        hyper::header::HeaderValue::from_static("bytes"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&count.to_string()) {
        h.insert(hyper::header::CONTENT_LENGTH, v);
    }
    if partial {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            h.insert(hyper::header::CONTENT_RANGE, v);
        }
    }
    r
}

fn channel_body(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|r| (r.map(Frame::data), rx))
    });
    BodyExt::boxed_unsync(StreamBody::new(stream.boxed()))
}

fn dropped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "injected fault: export connection dropped",
    )
}

/// Stream `count` bytes from `start`, in a blocking thread.
fn file_stream(path: PathBuf, start: u64, count: u64, drop_after: Option<u64>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let run = || -> std::io::Result<()> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(start))?;
            let mut left = count;
            let mut sent = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            while left > 0 {
                let mut n = (left as usize).min(buf.len());
                if let Some(limit) = drop_after {
                    if sent >= limit {
                        let _ = tx.blocking_send(Err(dropped()));
                        return Ok(());
                    }
                    n = n.min((limit - sent) as usize);
                }
                let got = crate::disk::read_full(&mut f, &mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank while serving",
                    ));
                }
                if tx
                    .blocking_send(Ok(Bytes::copy_from_slice(&buf[..got])))
                    .is_err()
                {
                    return Ok(());
                }
                left -= got as u64;
                sent += got as u64;
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    channel_body(rx)
}

struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    sent: u64,
    drop_after: Option<u64>,
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = buf;
        if let Some(limit) = self.drop_after {
            if self.sent >= limit {
                let _ = self.tx.blocking_send(Err(dropped()));
                return Err(dropped());
            }
            b = &buf[..buf.len().min((limit - self.sent) as usize)];
        }
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(b)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        self.sent += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A gzip stream of the whole image.
pub(crate) fn serve_gzip(path: PathBuf, head: bool, drop_after: Option<u64>) -> Response<Body> {
    let body = if head {
        full(Vec::new())
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let w = ChanWriter {
                tx: tx.clone(),
                sent: 0,
                drop_after,
            };
            let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            let run = |enc: &mut flate2::write::GzEncoder<ChanWriter>| -> std::io::Result<()> {
                let mut f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    enc.write_all(&buf[..n])?;
                }
                enc.try_finish()
            };
            if let Err(e) = run(&mut enc) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        channel_body(rx)
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/gzip"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Err(()));
    }
}
