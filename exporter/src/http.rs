//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, over plain HTTP or TLS.
//!
//! * `/metrics` renders a fresh scrape from the [`MetricsSource`] (Prometheus text 0.0.4),
//!   gzip-compressed when the request's `Accept-Encoding` allows gzip.
//! * `/healthz` answers 200 while the process serves; `/readyz` answers 200 once the source says
//!   it is ready (cluster mode: reflectors synced), else 503.
//! * TLS (optional): the certificate and key are PEM files; their modification times are checked
//!   on every new connection and the files are loaded again when they changed (cert-manager
//!   rotation needs no restart). A failed reload keeps the previous certificate and logs why.
//! * Shutdown: when the `shutdown` future completes (SIGTERM), the listener stops accepting,
//!   in-flight requests finish (bounded by a grace period), then [`serve`] returns.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// What `/metrics` and `/readyz` serve.
pub trait MetricsSource: Send + Sync + 'static {
    /// Renders one scrape.
    fn render(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>>;
    /// Whether the source is ready (`/readyz`).
    fn ready(&self) -> bool;
}

/// TLS certificate and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Loads TLS configs and reloads them when the files change.
struct TlsReloader {
    files: TlsFiles,
    state: Mutex<(
        Option<SystemTime>,
        Option<SystemTime>,
        Arc<rustls::ServerConfig>,
    )>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds a rustls server config from PEM files.
pub fn load_tls(files: &TlsFiles) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls {
            what: "certificate",
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Tls {
            what: "certificate",
            path: files.cert.clone(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    // The key's parse error is reported by kind only, never with file content.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|_| Error::Tls {
        what: "key",
        path: files.key.clone(),
        reason: "no readable PEM private key".into(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            what: "certificate",
            path: files.cert.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls {
            what: "certificate",
            path: files.cert.clone(),
            reason: format!("certificate and key do not form a usable pair: {e}"),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

impl TlsReloader {
    fn new(files: TlsFiles) -> Result<TlsReloader> {
        let cfg = load_tls(&files)?;
        let state = (mtime(&files.cert), mtime(&files.key), Arc::new(cfg));
        Ok(TlsReloader {
            files,
            state: Mutex::new(state),
        })
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (c, k) = (mtime(&self.files.cert), mtime(&self.files.key));
        if (c, k) != (st.0, st.1) {
            match load_tls(&self.files) {
                Ok(cfg) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    *st = (c, k, Arc::new(cfg));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS reload failed; keeping the previous certificate");
                    st.0 = c;
                    st.1 = k;
                }
            }
        }
        st.2.clone()
    }
}

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    source: Arc<dyn MetricsSource>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
    }
    let resp = match req.uri().path() {
        "/metrics" => {
            let body = source.render().await;
            let gzip = accepts_gzip(&req);
            let mut r = if gzip {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 8),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                let _ = enc.write_all(body.as_bytes());
                let gz = enc.finish().unwrap_or_default();
                let mut r = Response::new(Full::new(Bytes::from(gz)));
                r.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                r
            } else {
                Response::new(Full::new(Bytes::from(body)))
            };
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::render::CONTENT_TYPE),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if source.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/" => text(
            StatusCode::OK,
            "virtguard-exporter: /metrics /healthz /readyz\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Serves until `shutdown` completes, then drains in-flight requests (at most `grace`).
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn MetricsSource>,
    tls: Option<TlsFiles>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let tls = tls.map(TlsReloader::new).transpose()?.map(Arc::new);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Transient accept errors (EMFILE, ECONNABORTED): log and go on.
                    tracing::warn!(addr = %addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let src = source.clone();
        let svc = hyper::service::service_fn(move |req| handle(src.clone(), req));
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let fut = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                });
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, "HTTPS connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// Binds `addr` (e.g. `0.0.0.0:9750`).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Http {
        addr: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed {
        ready: bool,
    }

    impl MetricsSource for Fixed {
        fn render(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
            Box::pin(async {
                "virtguard_exporter_build_info{version=\"x\",mode=\"node\"} 1\n".repeat(50)
            })
        }
        fn ready(&self) -> bool {
            self.ready
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let pos = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&buf[..pos]).to_string();
        (head, buf[pos + 4..].to_vec())
    }

    async fn start(
        ready: bool,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(serve(
            listener,
            Arc::new(Fixed { ready }),
            None,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(2),
        ));
        (addr, tx, h)
    }

    #[tokio::test]
    async fn endpoints_gzip_and_graceful_shutdown() {
        let (addr, stop, handle) = start(false).await;
        let (head, body) = get(addr, "/metrics", "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"));
        assert!(!head.to_ascii_lowercase().contains("content-encoding"));
        let plain = String::from_utf8(body).unwrap();
        assert_eq!(plain.lines().count(), 50);

        let (head, body) = get(addr, "/metrics", "Accept-Encoding: deflate, gzip;q=0.8\r\n").await;
        assert!(
            head.to_ascii_lowercase().contains("content-encoding: gzip"),
            "{head}"
        );
        assert!(body.len() < plain.len() / 4, "compressed");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, plain);

        let (head, _) = get(addr, "/metrics", "Accept-Encoding: gzip;q=0\r\n").await;
        assert!(
            !head.to_ascii_lowercase().contains("content-encoding"),
            "q=0 refuses gzip"
        );

        assert!(get(addr, "/healthz", "")
            .await
            .0
            .starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz", "").await.0.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/nope", "").await.0.starts_with("HTTP/1.1 404"));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }

    #[tokio::test]
    async fn readyz_follows_the_source() {
        let (addr, _stop, _h) = start(true).await;
        assert!(get(addr, "/readyz", "").await.0.starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn tls_errors_name_the_file_and_never_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "SECRET-KEY-MATERIAL").unwrap();
        let err = load_tls(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.crt"), "{err}");
        let gen = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert, gen.cert.pem()).unwrap();
        let err = load_tls(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.key") && !err.contains("SECRET"), "{err}");
        std::fs::write(&key, gen.key_pair.serialize_pem()).unwrap();
        load_tls(&TlsFiles { cert, key }).unwrap();
    }

    async fn tls_get(
        addr: std::net::SocketAddr,
        trust: &rcgen::Certificate,
    ) -> std::io::Result<String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        Ok(String::from_utf8_lossy(&buf).to_string())
    }

    /// HTTPS works, and a certificate rotated on disk is served to new connections without a
    /// restart.
    #[tokio::test]
    async fn tls_serves_and_reloads_rotated_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&files.cert, one.cert.pem()).unwrap();
        std::fs::write(&files.key, one.key_pair.serialize_pem()).unwrap();
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _h = tokio::spawn(serve(
            listener,
            Arc::new(Fixed { ready: true }),
            Some(files.clone()),
            std::future::pending(),
            Duration::from_secs(1),
        ));
        let r = tls_get(addr, &one.cert).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        tokio::time::sleep(Duration::from_millis(20)).await;
        let two = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&files.key, two.key_pair.serialize_pem()).unwrap();
        std::fs::write(&files.cert, two.cert.pem()).unwrap();
        let r = tls_get(addr, &two.cert).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "new certificate served: {r}");
        assert!(
            tls_get(addr, &one.cert).await.is_err(),
            "old certificate no longer served"
        );
    }
}
