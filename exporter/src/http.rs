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
