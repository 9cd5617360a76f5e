//! The `cdi-upload` data path: per volume a DataVolume with an `upload` source sized at least
//! as large as the original, an UploadTokenRequest, and one `POST /v1beta1/upload` to CDI's
//! upload proxy whose body is the image as a sequence of zstd frames, one per chunk (CDI detects
//! zstd by its magic bytes; an all-zero 4 MiB chunk costs a few hundred bytes on the wire). A
//! chunk stored compressed is sent as its stored zstd frame (decrypted and decoded once, to
//! check it against its id), so only chunks stored raw are compressed again.
//!
//! Invariants: every chunk is verified against its id as it is fetched, and the whole-image
//! digest recorded at backup time is recomputed on the way: a mismatch aborts the body, so CDI
//! never marks the upload complete. 5xx and 401 answers are retried with backoff, each retry
//! with a fresh token (a 401 means the token expired, and a proxy that answers before reading
//! the body may look like a reset connection); a repository error is never retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use indicatif::ProgressBar;
use kube::api::PostParams;
use kube::Api;
use virtguard_api::{CDIConfig, DataVolume, UploadTokenRequest};

use super::cluster::get_opt;
use super::context::{create, Context};
use super::error::{RestoreError, Result};
use super::model::{Plan, RestoreRequest, VolumePlan};
use super::objects::{datavolume_object, upload_token_request};
use super::progress::VolumeReport;
use super::wait::poll;
use crate::cluster::ClusterError;
use crate::repo::format::{chunk_len, Index};
use crate::repo::Repository;

/// zstd level of the upload stream: fast, the network is rarely slower than level 1.
const UPLOAD_ZSTD_LEVEL: i32 = 1;
/// Attempts of one volume's upload (5xx and 401 are retried).
const UPLOAD_ATTEMPTS: u32 = 5;

/// Waits until DataVolume `ns/name` is in phase `want`; its disappearance or failure (with its
/// conditions) is an upload error.
async fn wait_dv(
    ctx: &Context<'_>,
    ns: &str,
    name: &str,
    want: &str,
    timeout: Duration,
) -> Result<()> {
    let res = poll(
        format!("DataVolume {ns}/{name} to be {want}"),
        timeout,
        || async {
            let Some(dv) = get_opt::<DataVolume>(ctx.client, ns, name).await? else {
                return Ok(Some(Err("the DataVolume disappeared".to_string())));
            };
            let status = dv.status.unwrap_or_default();
            Ok(match status.phase.as_deref().unwrap_or("") {
                phase if phase == want => Some(Ok(())),
                "Failed" => Some(Err(format!(
                    "the DataVolume failed: {}",
                    status
                        .conditions
                        .and_then(|c| serde_json::to_string(&c).ok())
                        .unwrap_or_default()
                ))),
                _ => None,
            })
        },
    )
    .await?;
    res.map_err(|m| RestoreError::Upload {
        volume: name.to_string(),
        pvc: format!("{ns}/{name}"),
        message: m,
    })
}

async fn upload_token(ctx: &Context<'_>, ns: &str, pvc: &str) -> Result<String> {
    let api: Api<UploadTokenRequest> = Api::namespaced(ctx.client.clone(), ns);
    let out = api
        .create(&PostParams::default(), &upload_token_request(ns, pvc))
        .await
        .map_err(ClusterError::api(
            "requesting an upload token for",
            "PVC",
            format!("{ns}/{pvc}"),
        ))?;
    out.status
        .and_then(|s| s.token)
        .ok_or_else(|| RestoreError::Upload {
            volume: pvc.to_string(),
            pvc: format!("{ns}/{pvc}"),
            message: "the UploadTokenRequest was answered without status.token (is CDI installed?)"
                .into(),
        })
}

async fn upload_proxy_url(ctx: &Context<'_>, req: &RestoreRequest) -> Result<String> {
    if let Some(u) = &req.upload_proxy_url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let api: Api<CDIConfig> = Api::all(ctx.client.clone());
    let cfg =
        api.get_opt("config")
            .await
            .map_err(ClusterError::api("reading", "CDIConfig", "config"))?;
    let url = cfg
        .and_then(|c| c.status)
        .and_then(|s| s.upload_proxy_url)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            RestoreError::Invalid(
                "CDI's upload proxy URL is unknown (cdiconfigs/config has no status.uploadProxyURL): pass --upload-proxy-url, or use --method job".into(),
            )
        })?;
    let url = if url.starts_with("http://") || url.starts_with("https://") {
        url
    } else {
        format!("https://{url}")
    };
    Ok(url.trim_end_matches('/').to_string())
}

fn http_client(ctx: &Context<'_>, req: &RestoreRequest) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(30));
    for der in &ctx.kube_ca {
        if let Ok(c) = reqwest::Certificate::from_der(der) {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(pem) = &req.upload_proxy_ca {
        let c = reqwest::Certificate::from_pem(pem).map_err(|e| {
            RestoreError::Invalid(format!("--upload-proxy-ca is not a PEM certificate: {e}"))
        })?;
        b = b.add_root_certificate(c);
    }
    b.build()
        .map_err(|e| RestoreError::Invalid(format!("building the HTTP client: {e}")))
}

/// One chunk on its way: (was zero, id unless a full zero chunk, zstd frame, raw length).
type Frame = (bool, Option<crate::repo::ChunkId>, Bytes, usize);

/// What the upload body stream reports back.
#[derive(Debug, Default)]
struct BodyState {
    wire: AtomicU64,
    zero_chunks: AtomicU64,
    failure: Mutex<Option<crate::repo::Error>>,
}

/// The upload body: the volume's chunks in order, each as one zstd frame, fetched ahead in
/// parallel and verified; the image digest is recomputed from the chunk ids as they go by and
/// checked after the last one. Any error ends the stream with an I/O error (aborting the
/// request) and is kept in `state.failure`.
fn upload_body(
    repo: Arc<Repository>,
    index: Arc<Index>,
    expected: String,
    concurrency: usize,
    progress: Option<ProgressBar>,
    state: Arc<BodyState>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let cs = index.chunk_size;
    let size = index.size;
    let n = index.chunks.len();
    let full_zero_id = repo.zero_chunk_id(cs as usize);
    let zero_frame: Arc<Mutex<Option<Bytes>>> = Arc::default();
    let chunks = {
        let repo = repo.clone();
        let index = index.clone();
        stream::iter(0..n)
            .map(move |i| {
                let repo = repo.clone();
                let index = index.clone();
                let zero_frame = zero_frame.clone();
                async move {
                    let id = index.chunks[i];
                    let len = chunk_len(size, cs, i as u64);
                    let compress = move |data: Vec<u8>| {
                        zstd::bulk::compress(&data, UPLOAD_ZSTD_LEVEL)
                            .map(Bytes::from)
                            .map_err(|e| crate::repo::Error::Codec(format!("zstd: {e}")))
                    };
                    if id.is_zero_marker() {
                        let full = len == cs as usize;
                        let cached = if full {
                            zero_frame.lock().unwrap_or_else(|p| p.into_inner()).clone()
                        } else {
                            None
                        };
                        let frame = match cached {
                            Some(f) => f,
                            None => {
                                let f =
                                    tokio::task::spawn_blocking(move || compress(vec![0u8; len]))
                                        .await
                                        .map_err(|e| {
                                            crate::repo::Error::Internal(format!(
                                                "compressor failed: {e}"
                                            ))
                                        })??;
                                if full {
                                    *zero_frame.lock().unwrap_or_else(|p| p.into_inner()) =
                                        Some(f.clone());
                                }
                                f
                            }
                        };
                        let zid = if full {
                            None
                        } else {
                            Some(repo.zero_chunk_id(len))
                        };
                        Ok::<_, crate::repo::Error>((true, zid, frame, len))
                    } else {
                        // Verified against its id; a chunk stored as zstd is sent as its
                        // stored frame (no second compression), one stored raw is compressed.
                        let (data, stored) = repo.get_chunk_with_frame(&id).await?;
                        if data.len() != len {
                            return Err(crate::repo::Error::corrupt(
                                id.key(),
                                format!(
                                    "chunk has {} bytes, index position {i} needs {len}",
                                    data.len()
                                ),
                            ));
                        }
                        let frame = match stored {
                            Some(f) => f,
                            None => tokio::task::spawn_blocking(move || compress(data))
                                .await
                                .map_err(|e| {
                                    crate::repo::Error::Internal(format!("compressor failed: {e}"))
                                })??,
                        };
                        Ok((false, Some(id), frame, len))
                    }
                }
            })
            .buffered(concurrency.max(1))
            .boxed()
    };
    struct S {
        chunks: futures::stream::BoxStream<'static, crate::repo::Result<Frame>>,
        hasher: blake3::Hasher,
        done: bool,
    }
    let init = S {
        chunks,
        hasher: blake3::Hasher::new(),
        done: false,
    };
    stream::unfold(init, move |mut s| {
        let state = state.clone();
        let progress = progress.clone();
        let expected = expected.clone();
        async move {
            if s.done {
                return None;
            }
            let fail = |s: &mut S, e: crate::repo::Error| {
                let msg = e.to_string();
                *state.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                s.done = true;
                std::io::Error::other(msg)
            };
            match s.chunks.next().await {
                Some(Ok((zero, id, frame, len))) => {
                    let id = id.unwrap_or(full_zero_id);
                    s.hasher.update(&id.0);
                    if zero {
                        state.zero_chunks.fetch_add(1, Ordering::Relaxed);
                    }
                    state.wire.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    if let Some(p) = &progress {
                        p.inc(len as u64);
                    }
                    Some((Ok(frame), s))
                }
                Some(Err(e)) => {
                    let err = fail(&mut s, e);
                    Some((Err(err), s))
                }
                None => {
                    s.hasher.update(&(n as u64).to_le_bytes());
                    let actual = s.hasher.finalize().to_hex().to_string();
                    if actual != expected {
                        let err = fail(
                            &mut s,
                            crate::repo::Error::corrupt(
                                "<image>",
                                format!("the image digest of the streamed volume is {actual}, the manifest records {expected}"),
                            ),
                        );
                        return Some((Err(err), s));
                    }
                    None
                }
            }
        }
    })
}

pub(super) async fn upload_volume(
    ctx: &Context<'_>,
    plan: &Plan,
    v: &VolumePlan,
    req: &RestoreRequest,
) -> Result<VolumeReport> {
    let ns = plan.namespace.as_str();
    let t = Instant::now();
    let pvc_id = format!("{ns}/{}", v.claim);
    let up_err = |message: String| RestoreError::Upload {
        volume: v.volume.clone(),
        pvc: pvc_id.clone(),
        message,
    };
    let index = Arc::new(ctx.repo.load_index(ctx.manifest, &v.volume).await?);
    let expected = ctx
        .manifest
        .volumes
        .iter()
        .find(|e| e.name == v.volume)
        .map(|e| e.image_digest.clone())
        .unwrap_or_default();
    create(ctx, ns, &datavolume_object(plan, v)).await?;
    wait_dv(ctx, ns, &v.claim, "UploadReady", req.timeout).await?;
    let base = upload_proxy_url(ctx, req).await?;
    let url = format!("{base}/v1beta1/upload");
    let http = http_client(ctx, req)?;
    let mut token = upload_token(ctx, ns, &v.claim).await?;
    let mut attempts = 0;
    let (wire, zero_chunks) = loop {
        attempts += 1;
        let state = Arc::new(BodyState::default());
        let pb = ctx.progress.volume(&v.volume, v.size);
        let body = upload_body(
            ctx.repo.clone(),
            index.clone(),
            expected.clone(),
            req.concurrency,
            pb.clone(),
            state.clone(),
        );
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| up_err("the upload token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let res = http
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        if let Some(p) = &pb {
            p.finish_and_clear();
        }
        if let Some(e) = state
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // A repository problem (corrupt chunk, digest): retrying cannot help.
            return Err(e.into());
        }
        let (retry, msg) = match res {
            Ok(r) if r.status().is_success() => {
                break (
                    state.wire.load(Ordering::Relaxed),
                    state.zero_chunks.load(Ordering::Relaxed),
                );
            }
            Ok(r) => {
                let code = r.status().as_u16();
                let text: String = r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                (code >= 500 || code == 401, format!("HTTP {code}: {text}"))
            }
            Err(e) => (true, format!("{e}")),
        };
        if !retry || attempts >= UPLOAD_ATTEMPTS {
            return Err(up_err(format!("{msg} (after {attempts} attempt(s))")));
        }
        ctx.progress.line(&format!(
            "volume {}: upload attempt {attempts} failed ({msg}); retrying with a new token",
            v.volume
        ));
        tokio::time::sleep(Duration::from_millis(250 * (1 << attempts.min(5)))).await;
        // CDI needs the upload server again.
        wait_dv(ctx, ns, &v.claim, "UploadReady", req.timeout).await?;
        // A fresh token every time: a 401 means the token expired, and when the proxy answers
        // before reading the body the client may only see a reset connection, not the 401.
        token = upload_token(ctx, ns, &v.claim).await?;
    };
    wait_dv(ctx, ns, &v.claim, "Succeeded", req.timeout).await?;
    ctx.progress.line(&format!(
        "volume {}: {} bytes uploaded into DataVolume {pvc_id} as {} bytes of zstd ({} zero chunks)",
        v.volume, v.size, wire, zero_chunks
    ));
    Ok(VolumeReport {
        volume: v.volume.clone(),
        claim: v.claim.clone(),
        size: v.size,
        wire_bytes: wire,
        zero_chunks,
        chunks: index.chunks.len() as u64,
        attempts,
        seconds: t.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::Manifest;

    /// A repository with one committed backup of `data` as volume `root` (64 KiB chunks).
    async fn repo_with(data: &[u8]) -> (tempfile::TempDir, Arc<Repository>, Manifest) {
        repo_with_key(data, None).await
    }

    async fn repo_with_key(
        data: &[u8],
        key: Option<&[u8]>,
    ) -> (tempfile::TempDir, Arc<Repository>, Manifest) {
        use crate::repo::repository::InitOptions;
        use crate::repo::{BackupOptions, BackupSession, FileSource, LocalStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, data).unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
        let opts = InitOptions {
            chunk_size: 64 << 10,
            key: key.map(<[u8]>::to_vec),
            kdf_memory_kib: 1024,
            kdf_iterations: 1,
            ..Default::default()
        };
        let repo = Arc::new(Repository::init(store, opts).await.unwrap());
        let mut s = BackupSession::start(repo.clone(), "ns", "vm", BackupOptions::default())
            .await
            .unwrap();
        let src: Arc<dyn crate::repo::VolumeSource> = Arc::new(FileSource::open(&img).unwrap());
        s.write_volume("root", src, None).await.unwrap();
        let m = s.commit().await.unwrap();
        (dir, repo, m)
    }

    async fn collect(
        repo: &Arc<Repository>,
        m: &Manifest,
        expected: &str,
    ) -> (Vec<std::io::Result<Bytes>>, Arc<BodyState>) {
        let index = Arc::new(repo.load_index(m, "root").await.unwrap());
        let state = Arc::new(BodyState::default());
        let body = upload_body(
            repo.clone(),
            index,
            expected.to_string(),
            4,
            None,
            state.clone(),
        );
        (body.collect().await, state)
    }

    /// Compressible chunks go out as their stored frames, incompressible ones (stored raw)
    /// are compressed for the wire; encrypted or not, the body decodes to the image.
    #[tokio::test]
    async fn upload_body_forwards_stored_frames_and_compresses_raw_chunks() {
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; 512 << 10];
        rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data[..128 << 10]);
        for (i, b) in data[128 << 10..256 << 10].iter_mut().enumerate() {
            *b = b"the quick brown fox "[i % 20];
        }
        for key in [None, Some(&b"secret"[..])] {
            let (_d, repo, m) = repo_with_key(&data, key).await;
            let (frames, state) = collect(&repo, &m, &m.volumes[0].image_digest).await;
            let frames: Vec<Bytes> = frames.into_iter().map(Result::unwrap).collect();
            let wire: Vec<u8> = frames.concat();
            assert_eq!(zstd::stream::decode_all(&wire[..]).unwrap(), data);
            assert!(state.failure.lock().unwrap().is_none());
            // Chunks 2 and 3 (text): the stored frame, byte for byte.
            let index = repo.load_index(&m, "root").await.unwrap();
            let (_, stored) = repo.get_chunk_with_frame(&index.chunks[2]).await.unwrap();
            assert_eq!(stored.as_deref(), Some(&frames[2][..]), "key {key:?}");
            // Chunk 0 (random): stored raw, still a valid frame on the wire.
            let (raw, stored) = repo.get_chunk_with_frame(&index.chunks[0]).await.unwrap();
            assert!(stored.is_none());
            assert_eq!(zstd::stream::decode_all(&frames[0][..]).unwrap(), raw);
        }
    }

    #[tokio::test]
    async fn upload_body_is_zstd_of_the_image_with_cheap_zero_chunks() {
        let mut data = vec![0u8; 1 << 20];
        for (i, b) in data.iter_mut().enumerate().take(200_000) {
            *b = (i % 251) as u8;
        }
        let (_d, repo, m) = repo_with(&data).await;
        let (frames, state) = collect(&repo, &m, &m.volumes[0].image_digest).await;
        let mut wire = Vec::new();
        for f in frames {
            wire.extend_from_slice(&f.unwrap());
        }
        assert_eq!(zstd::stream::decode_all(&wire[..]).unwrap(), data);
        assert_eq!(state.wire.load(Ordering::Relaxed), wire.len() as u64);
        // 12 of 16 chunks are zero; each costs a few bytes.
        assert_eq!(state.zero_chunks.load(Ordering::Relaxed), 12);
        assert!(wire.len() < 20_000, "{} bytes on the wire", wire.len());
        assert!(state.failure.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn upload_body_fails_on_a_digest_mismatch() {
        let (_d, repo, m) = repo_with(&[7u8; 100_000]).await;
        let (frames, state) = collect(&repo, &m, "0000").await;
        assert!(
            frames.last().unwrap().is_err(),
            "the body must end with an error"
        );
        let err = state.failure.lock().unwrap().take().unwrap().to_string();
        assert!(
            err.contains("image digest") && err.contains("0000"),
            "{err}"
        );
    }
}
