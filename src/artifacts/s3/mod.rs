//! The only file of wick that knows AWS: the S3 client built from the standard credential chain
//! and the transfers on top of it (paginated listing, concurrent and ranged downloads with
//! resume, multipart upload). SDK errors become [`ArtifactError::S3`] here, with the S3 error
//! code and message (the SDK's own `Display` says only "service error") or, when no response
//! came, the SDK's failure kind and cause chain on one line.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_types::service_config::ServiceConfigKey;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::progress::Progress;
use super::{ArtifactError, S3Overrides, TransferOptions};

mod error;
mod upload;

use error::{one_line, sdk_error};

/// Chunks of an object in order, or the error that ended the download.
pub(super) type ChunkSender = mpsc::Sender<Result<Bytes, ArtifactError>>;

/// Region used when nothing configures one (S3 needs a region to sign requests).
const FALLBACK_REGION: &str = "us-east-1";
/// Write buffer per concurrent file download.
const FILE_BUFFER_BYTES: usize = 256 << 10;

/// An S3 client plus the transfer settings.
#[derive(Clone)]
pub(super) struct Store {
    client: Client,
    transfer: TransferOptions,
}

/// One listed object.
pub(super) struct Object {
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) etag: Option<String>,
}

/// One object to download into an existing (pre-sized) file.
pub(super) struct Download {
    pub(super) object: Object,
    pub(super) path: PathBuf,
}

/// Where downloaded chunks go.
enum Sink<'a> {
    File {
        writer: &'a mut BufWriter<tokio::fs::File>,
        path: &'a Path,
    },
    Memory(&'a mut BytesMut),
    Channel(&'a ChunkSender),
}

impl Sink<'_> {
    async fn put(&mut self, chunk: Bytes) -> Result<(), ArtifactError> {
        match self {
            Sink::File { writer, path } => writer
                .write_all(&chunk)
                .await
                .map_err(|e| ArtifactError::io(path, e)),
            Sink::Memory(buffer) => {
                buffer.extend_from_slice(&chunk);
                Ok(())
            }
            Sink::Channel(tx) => tx.send(Ok(chunk)).await.map_err(|_| {
                // The unpacker stopped early; it reports its own error.
                ArtifactError::io(
                    "<archive stream>",
                    std::io::Error::other("unpacker stopped"),
                )
            }),
        }
    }
}

/// A byte range `[start, end)` of one object; `end: None` = to the end of the object.
struct Part<'a> {
    bucket: &'a str,
    key: &'a str,
    etag: Option<&'a str>,
    start: u64,
    end: Option<u64>,
}

impl Part<'_> {
    fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Response headers of an opened GET.
struct Opened {
    body: ByteStream,
    /// Object size, from `Content-Range` (ranged GET) or `Content-Length` (plain GET).
    total: u64,
    etag: Option<String>,
}

/// The SDK's default HTTPS client (hyper, rustls, the platform's root certificates) with ring
/// as rustls' crypto provider. Also used by the credential providers (SSO, STS, metadata).
fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl Store {
    /// Builds the client: region, credentials and endpoint from the standard chain
    /// (environment, profile, web identity, ECS and EC2 metadata), then `overrides`.
    pub(super) async fn connect(transfer: &TransferOptions, overrides: &S3Overrides) -> Store {
        let retry = RetryConfig::standard()
            .with_max_attempts(transfer.max_attempts.max(1))
            .with_initial_backoff(transfer.initial_backoff);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry)
            .http_client(https_client());
        if let Some(region) = &overrides.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &overrides.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(keys) = &overrides.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &keys.access_key_id,
                &keys.secret_access_key,
                None,
                None,
                "wick-overrides",
            ));
        }
        let sdk = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            tracing::warn!(
                region = FALLBACK_REGION,
                "no AWS region configured (AWS_REGION, profile or instance metadata); assuming one"
            );
            config = config.region(Region::new(FALLBACK_REGION));
        }
        // Virtual-host addressing needs DNS for `bucket.host`, which MinIO and test servers
        // lack; AWS itself still accepts path-style requests.
        let path_style = overrides
            .force_path_style
            .unwrap_or_else(|| s3_endpoint(&sdk).is_some());
        config = config.force_path_style(path_style);
        Store {
            client: Client::from_conf(config.build()),
            transfer: transfer.clone(),
        }
    }

    /// Every object under `prefix`, following continuation tokens past 1,000 keys.
    pub(super) async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        progress: &Progress,
    ) -> Result<Vec<Object>, ArtifactError> {
        let uri = format!("s3://{bucket}/{prefix}");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            progress.request();
            let page = page.map_err(|e| sdk_error("ListObjectsV2", &uri, &e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(Object {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    etag: object.e_tag().map(str::to_owned),
                });
            }
        }
        Ok(objects)
    }

    /// Downloads `downloads` into their files, objects and parts of large objects concurrently
    /// (at most `concurrency` requests at once). Files must exist; large ones pre-sized.
    pub(super) async fn download(
        &self,
        bucket: &str,
        downloads: Vec<Download>,
        progress: &Arc<Progress>,
    ) -> Result<(), ArtifactError> {
        let mut jobs = VecDeque::new();
        for download in downloads {
            let download = Arc::new(download);
            let ranges = self.ranges(download.object.size);
            let remaining = Arc::new(AtomicUsize::new(ranges.len()));
            for (start, end) in ranges {
                jobs.push_back((Arc::clone(&download), start, end, Arc::clone(&remaining)));
            }
        }
        let mut running = JoinSet::new();
        loop {
            while running.len() < self.transfer.concurrency.max(1) {
                let Some((download, start, end, remaining)) = jobs.pop_front() else {
                    break;
                };
                let (store, bucket, progress) =
                    (self.clone(), bucket.to_owned(), Arc::clone(progress));
                running.spawn(async move {
                    store
                        .download_range(&bucket, &download, (start, end), &progress)
                        .await?;
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        progress.object_done();
                    }
                    Ok::<_, ArtifactError>(())
                });
            }
            match running.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                // Dropping `running` aborts the other transfers.
                Some(Ok(Err(err))) => return Err(err),
                Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            }
        }
    }

    /// `[start, end)` ranges for an object: one unranged request (`end: None`) below the
    /// threshold, parts of `part_bytes` above it.
    fn ranges(&self, size: u64) -> Vec<(u64, Option<u64>)> {
        let part = self.transfer.part_bytes.max(1);
        if size < self.transfer.ranged_threshold_bytes.max(part) {
            return vec![(0, None)];
        }
        (0..size.div_ceil(part))
            .map(|i| (i * part, Some(((i + 1) * part).min(size))))
            .collect()
    }

    async fn download_range(
        &self,
        bucket: &str,
        download: &Download,
        (start, end): (u64, Option<u64>),
        progress: &Progress,
    ) -> Result<(), ArtifactError> {
        let path = download.path.as_path();
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(|e| ArtifactError::io(path, e))?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ArtifactError::io(path, e))?;
        }
        let part = Part {
            bucket,
            key: &download.object.key,
            etag: download.object.etag.as_deref(),
            start,
            end,
        };
        let mut writer = BufWriter::with_capacity(FILE_BUFFER_BYTES, file);
        let mut sink = Sink::File {
            writer: &mut writer,
            path,
        };
        self.drain(&part, None, &mut sink, progress).await?;
        writer.flush().await.map_err(|e| ArtifactError::io(path, e))
    }

    /// Sends one object's bytes, in order, into `tx`: the first part streams straight through
    /// while up to `concurrency` later parts download ahead into memory (bounded: never the
    /// whole object).
    pub(super) async fn stream(
        &self,
        bucket: &str,
        key: &str,
        tx: &ChunkSender,
        progress: &Arc<Progress>,
    ) -> Result<(), ArtifactError> {
        let part_bytes = self.transfer.part_bytes.max(1);
        let first = Part {
            bucket,
            key,
            etag: None,
            start: 0,
            end: Some(part_bytes),
        };
        let opened = match self.open(&first, progress).await {
            Ok(opened) => opened,
            // A ranged GET of an empty object: nothing to stream; the unpacker reports it.
            Err(err) if err.s3_code() == Some("InvalidRange") => return Ok(()),
            Err(err) => return Err(err),
        };
        let total = opened.total;
        progress.expect(1, total);
        let etag = opened.etag.clone();
        let mut ranges: VecDeque<(u64, u64)> = (1..total.div_ceil(part_bytes))
            .map(|i| (i * part_bytes, ((i + 1) * part_bytes).min(total)))
            .collect();
        let mut ahead = AbortOnDrop(VecDeque::new());
        let spawn_next = |ranges: &mut VecDeque<(u64, u64)>, ahead: &mut AbortOnDrop| {
            if let Some((start, end)) = ranges.pop_front() {
                let (store, bucket, key, etag, progress) = (
                    self.clone(),
                    bucket.to_owned(),
                    key.to_owned(),
                    etag.clone(),
                    Arc::clone(progress),
                );
                ahead.0.push_back(tokio::spawn(async move {
                    let part = Part {
                        bucket: &bucket,
                        key: &key,
                        etag: etag.as_deref(),
                        start,
                        end: Some(end),
                    };
                    let mut buffer =
                        BytesMut::with_capacity(usize::try_from(end - start).unwrap_or(0));
                    store
                        .drain(&part, None, &mut Sink::Memory(&mut buffer), &progress)
                        .await?;
                    Ok(buffer.freeze())
                }));
            }
        };
        for _ in 0..self.transfer.concurrency.max(1) {
            spawn_next(&mut ranges, &mut ahead);
        }
        let first = Part {
            etag: etag.as_deref(),
            end: Some(part_bytes.min(total)),
            ..first
        };
        self.drain(&first, Some(opened), &mut Sink::Channel(tx), progress)
            .await?;
        while let Some(handle) = ahead.0.pop_front() {
            let bytes = match handle.await {
                Ok(result) => result?,
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            };
            spawn_next(&mut ranges, &mut ahead);
            Sink::Channel(tx).put(bytes).await?;
        }
        progress.object_done();
        Ok(())
    }

    /// Sends the GET for `part` (the SDK retries throttling, 5xx and connection errors).
    async fn open(&self, part: &Part<'_>, progress: &Progress) -> Result<Opened, ArtifactError> {
        let mut request = self.client.get_object().bucket(part.bucket).key(part.key);
        let ranged = part.start > 0 || part.end.is_some();
        if ranged {
            request = request.range(match part.end {
                Some(end) => format!("bytes={}-{}", part.start, end.saturating_sub(1)),
                None => format!("bytes={}-", part.start),
            });
        }
        // Every part must come from the same version of the object.
        if let Some(etag) = part.etag {
            request = request.if_match(etag);
        }
        progress.request();
        let output = request
            .send()
            .await
            .map_err(|e| sdk_error("GetObject", &part.uri(), &e))?;
        let total = if ranged {
            // `bytes 0-8388607/52428800`. A server that ignored the Range header would send
            // the whole object, which must not be written at this part's offset.
            output
                .content_range()
                .and_then(|range| range.rsplit('/').next())
                .and_then(|size| size.parse().ok())
                .ok_or_else(|| ArtifactError::S3 {
                    uri: part.uri(),
                    operation: "GetObject",
                    code: Some("InvalidResponse".into()),
                    status: None,
                    message: "a ranged GET came back without a valid Content-Range".into(),
                })?
        } else {
            output.content_length().unwrap_or(0).max(0) as u64
        };
        Ok(Opened {
            total,
            etag: output.e_tag().map(str::to_owned),
            body: output.body,
        })
    }

    /// Reads `part` into `sink`. A body that breaks mid-way (reset connection, stalled stream)
    /// is resumed from the last byte received with a new ranged GET, with backoff, up to
    /// `max_attempts` times.
    async fn drain(
        &self,
        part: &Part<'_>,
        mut opened: Option<Opened>,
        sink: &mut Sink<'_>,
        progress: &Progress,
    ) -> Result<(), ArtifactError> {
        let mut received = 0u64;
        let mut attempt = 1u32;
        let mut etag = part.etag.map(str::to_owned);
        loop {
            let resume = Part {
                etag: etag.as_deref(),
                start: part.start + received,
                ..*part
            };
            let mut current = match opened.take() {
                Some(current) => current,
                None => self.open(&resume, progress).await?,
            };
            if etag.is_none() {
                etag = current.etag.take();
            }
            let failure = loop {
                match current.body.next().await {
                    Some(Ok(chunk)) => {
                        received += chunk.len() as u64;
                        progress.add_bytes(chunk.len() as u64);
                        sink.put(chunk).await?;
                    }
                    Some(Err(err)) => break one_line(&err),
                    None => match part.end {
                        Some(end) if part.start + received < end => {
                            break format!(
                                "the body ended after {received} of {} bytes",
                                end - part.start
                            )
                        }
                        _ => return Ok(()),
                    },
                }
            };
            if attempt >= self.transfer.max_attempts.max(1) {
                return Err(ArtifactError::S3 {
                    uri: part.uri(),
                    operation: "GetObject",
                    code: Some("ResponseBodyError".into()),
                    status: None,
                    message: format!("{failure} (after {attempt} attempts)"),
                });
            }
            let backoff = self.transfer.initial_backoff * 2u32.saturating_pow(attempt - 1);
            tracing::warn!(uri = %part.uri(), received, attempt, error = %failure, "download interrupted; resuming");
            progress.retry();
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }
}

/// Tasks aborted when the owner returns early (an error elsewhere).
struct AbortOnDrop(VecDeque<JoinHandle<Result<Bytes, ArtifactError>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// The S3 endpoint URL configured through the environment or profile, if any, looked up the way
/// aws-sdk-s3 does (`AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`).
fn s3_endpoint(sdk: &SdkConfig) -> Option<String> {
    let key = ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()?;
    sdk.service_config()
        .and_then(|config| config.load_config(key))
        .or_else(|| sdk.endpoint_url().map(str::to_owned))
}
