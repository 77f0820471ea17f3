//! [`fetch`] (any [`ArtifactUri`] to a local package directory) and [`upload`]. Network work
//! runs on the async runtime; file-system and unpacking work on blocking threads.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tempfile::TempDir;
use tokio::sync::mpsc;

use super::archive::{self, ArchiveLimits, UnpackStats};
use super::progress::Reporter;
use super::s3::{ChunkSender, Download, Object, Store};
use super::{
    key_path, ArtifactError, ArtifactUri, FetchOptions, S3Overrides, TransferOptions,
    MODEL_ARCHIVE_NAME,
};

/// A model package on local disk. When it was downloaded or unpacked, it lives in a scratch
/// directory that is deleted when this value is dropped: keep it alive while the model's files
/// are in use.
#[derive(Debug)]
pub struct LocalModel {
    dir: PathBuf,
    scratch: Option<TempDir>,
    stats: FetchStats,
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchStats {
    /// Bytes received from S3 (0 for local sources).
    pub bytes_downloaded: u64,
    /// Objects downloaded.
    pub objects: u64,
    /// S3 requests sent (listing pages, GETs, parts), retries by the SDK not counted.
    pub requests: u64,
    /// Interrupted bodies resumed by wick.
    pub resumed: u64,
    /// Set when an archive was unpacked.
    pub unpacked: Option<UnpackStats>,
    /// Wall time of the whole fetch.
    pub elapsed: Duration,
}

impl LocalModel {
    /// The package directory (what `Classifier::load` takes).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory is a scratch copy (downloaded or unpacked) rather than the source.
    pub fn is_scratch(&self) -> bool {
        self.scratch.is_some()
    }

    /// Transfer and unpack figures, for logs and benchmarks.
    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }

    /// Keeps the scratch directory on disk after this value is gone; returns its path.
    pub fn keep(self) -> PathBuf {
        if let Some(scratch) = self.scratch {
            let _ = scratch.keep();
        }
        self.dir
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadStats {
    /// `s3://bucket/key` written.
    pub uri: String,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Parts (1 for a single PutObject).
    pub parts: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Makes the package at `uri` available as a local directory.
///
/// - A local directory is used in place, unless it holds a `model.tar.gz` and no `config.json`
///   at its root (a model directory holding only SageMaker's archive): then that is unpacked.
/// - A local archive file is unpacked.
/// - `s3://bucket/prefix/` downloads every object below the prefix, keys as sub-directories.
/// - `s3://bucket/key.tar.gz` streams the object through the unpacker (no full copy on disk
///   or in memory).
///
/// Copies go to a new scratch directory under `opts.scratch_parent` (`$TMPDIR`), removed on
/// failure and when the returned [`LocalModel`] is dropped.
pub async fn fetch(uri: &ArtifactUri, opts: &FetchOptions) -> Result<LocalModel, ArtifactError> {
    let started = Instant::now();
    let mut model = match uri {
        ArtifactUri::Local(path) => fetch_local(path, opts).await?,
        ArtifactUri::S3Prefix { bucket, prefix } => fetch_prefix(uri, bucket, prefix, opts).await?,
        ArtifactUri::S3Archive { bucket, key } => fetch_archive(uri, bucket, key, opts).await?,
    };
    model.stats.elapsed = started.elapsed();
    let stats = &model.stats;
    tracing::info!(
        uri = %uri,
        dir = %model.dir.display(),
        bytes_downloaded = stats.bytes_downloaded,
        objects = stats.objects,
        unpacked_bytes = stats.unpacked.map(|u| u.bytes),
        elapsed_ms = stats.elapsed.as_millis() as u64,
        "model artifacts ready"
    );
    Ok(model)
}

/// Uploads the local file `file` to `dest`: `s3://bucket/key`, or `s3://bucket/prefix/` to
/// keep the file's name. Large files go up as a concurrent multipart upload.
pub async fn upload(
    file: &Path,
    dest: &ArtifactUri,
    transfer: &TransferOptions,
    s3: &S3Overrides,
) -> Result<UploadStats, ArtifactError> {
    let started = Instant::now();
    let (bucket, key) = match dest {
        ArtifactUri::S3Archive { bucket, key } => (bucket, key.clone()),
        ArtifactUri::S3Prefix { bucket, prefix } => {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            (bucket, format!("{prefix}{name}"))
        }
        ArtifactUri::Local(_) => {
            return Err(ArtifactError::InvalidUri {
                uri: dest.to_string(),
                reason: "uploads go to `s3://bucket/key.tar.gz` or `s3://bucket/prefix/`".into(),
            })
        }
    };
    let uri = format!("s3://{bucket}/{key}");
    let store = Store::connect(transfer, s3).await;
    let (progress, _reporter) =
        Reporter::track(uri.clone(), "uploading", transfer.progress_interval);
    let parts = store.upload(file, bucket, &key, &progress).await?;
    Ok(UploadStats {
        uri,
        bytes: progress.snapshot().bytes,
        parts,
        elapsed: started.elapsed(),
    })
}

async fn fetch_local(path: &Path, opts: &FetchOptions) -> Result<LocalModel, ArtifactError> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ArtifactError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ArtifactError::io(path, e)
        }
    })?;
    let archive = if meta.is_file() {
        path.to_owned()
    } else {
        let tarball = path.join(MODEL_ARCHIVE_NAME);
        let has_config = tokio::fs::try_exists(path.join("config.json"))
            .await
            .unwrap_or(false);
        let has_tarball = tokio::fs::metadata(&tarball)
            .await
            .is_ok_and(|m| m.is_file());
        if has_config || !has_tarball {
            return Ok(LocalModel {
                dir: path.to_owned(),
                scratch: None,
                stats: FetchStats::default(),
            });
        }
        tarball
    };
    let scratch = new_scratch(opts)?;
    let limits = opts.limits;
    let unpacked = blocking_in(&scratch, move |dest| {
        let file = File::open(&archive).map_err(|e| ArtifactError::io(&archive, e))?;
        archive::unpack(file, dest, &limits).map_err(|cause| ArtifactError::Archive {
            uri: archive.display().to_string(),
            cause,
        })
    })
    .await?;
    finish(
        scratch,
        FetchStats {
            unpacked: Some(unpacked),
            ..FetchStats::default()
        },
    )
}

async fn fetch_prefix(
    uri: &ArtifactUri,
    bucket: &str,
    prefix: &str,
    opts: &FetchOptions,
) -> Result<LocalModel, ArtifactError> {
    let uri_text = uri.to_string();
    let store = Store::connect(&opts.transfer, &opts.s3).await;
    let (progress, _reporter) = Reporter::track(
        uri_text.clone(),
        "downloading model",
        opts.transfer.progress_interval,
    );
    let objects = store.list(bucket, prefix, &progress).await?;
    let mut planned = Vec::with_capacity(objects.len());
    for object in objects {
        match key_path(prefix, &object.key) {
            Ok(Some(rel)) => planned.push((object, rel)),
            Ok(None) => {} // a directory marker
            Err(reason) => {
                return Err(ArtifactError::UnsafeKey {
                    uri: uri_text,
                    key: object.key,
                    reason,
                })
            }
        }
    }
    if planned.is_empty() {
        return Err(ArtifactError::EmptyPrefix { uri: uri_text });
    }
    progress.expect(
        planned.len() as u64,
        planned.iter().map(|(o, _)| o.size).sum(),
    );
    let scratch = new_scratch(opts)?;
    let presize_from = opts.transfer.ranged_threshold_bytes;
    let downloads = blocking_in(&scratch, move |root| {
        layout(root, planned, &uri_text, presize_from)
    })
    .await?;
    store.download(bucket, downloads, &progress).await?;
    let done = progress.snapshot();
    finish(
        scratch,
        FetchStats {
            bytes_downloaded: done.bytes,
            objects: done.objects,
            requests: done.requests,
            resumed: done.retries,
            ..FetchStats::default()
        },
    )
}

/// Creates every directory and file; files downloaded in parts (`presize_from` bytes and up)
/// at their final size, so parts can land at their offsets in any order. Partial files need no
/// temporary names: the scratch directory is only handed out once everything has arrived, and
/// deleted otherwise.
fn layout(
    root: &Path,
    planned: Vec<(Object, PathBuf)>,
    uri: &str,
    presize_from: u64,
) -> Result<Vec<Download>, ArtifactError> {
    let mut downloads = Vec::with_capacity(planned.len());
    for (object, rel) in planned {
        let path = root.join(&rel);
        let created = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| File::create_new(&path))
            .and_then(|file| {
                if object.size >= presize_from {
                    file.set_len(object.size)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = created {
            return Err(match e.kind() {
                io::ErrorKind::AlreadyExists
                | io::ErrorKind::NotADirectory
                | io::ErrorKind::IsADirectory => ArtifactError::UnsafeKey {
                    uri: uri.to_owned(),
                    key: object.key,
                    reason: "a file and a directory of the same name (another key)",
                },
                _ => ArtifactError::io(&path, e),
            });
        }
        downloads.push(Download { object, path });
    }
    Ok(downloads)
}

async fn fetch_archive(
    uri: &ArtifactUri,
    bucket: &str,
    key: &str,
    opts: &FetchOptions,
) -> Result<LocalModel, ArtifactError> {
    let uri_text = uri.to_string();
    let store = Store::connect(&opts.transfer, &opts.s3).await;
    let (progress, _reporter) = Reporter::track(
        uri_text.clone(),
        "downloading model",
        opts.transfer.progress_interval,
    );
    let scratch = new_scratch(opts)?;
    // Two parts of channel slack: the unpacker and the network each get a little ahead.
    let (tx, rx) = mpsc::channel(2);
    // Aborted if this future is dropped (e.g. the server shutting down mid-download).
    let mut download = AbortOnDrop(tokio::spawn({
        let (bucket, key, progress) = (bucket.to_owned(), key.to_owned(), Arc::clone(&progress));
        async move {
            let tx: ChunkSender = tx;
            if let Err(err) = store.stream(&bucket, &key, &tx, &progress).await {
                // Through the stream, so the unpacker stops and the real cause is reported.
                let _ = tx.send(Err(err)).await;
            }
        }
    }));
    let failure = Arc::new(Mutex::new(None));
    let reader = ChannelReader {
        rx,
        chunk: Bytes::new(),
        failure: Arc::clone(&failure),
    };
    let limits: ArchiveLimits = opts.limits;
    let unpacked = blocking_in(&scratch, move |dest| archive::unpack(reader, dest, &limits)).await;
    let download_error = failure.lock().ok().and_then(|mut slot| slot.take());
    let unpacked = match (unpacked, download_error) {
        (_, Some(err)) => return Err(err),
        (Err(cause), None) => {
            return Err(ArtifactError::Archive {
                uri: uri_text,
                cause,
            });
        }
        (Ok(unpacked), None) => unpacked,
    };
    let _ = (&mut download.0).await;
    let done = progress.snapshot();
    finish(
        scratch,
        FetchStats {
            bytes_downloaded: done.bytes,
            objects: done.objects,
            requests: done.requests,
            resumed: done.retries,
            unpacked: Some(unpacked),
            elapsed: Duration::ZERO,
        },
    )
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A new private directory under `scratch_parent` (`$TMPDIR`). Shared with the blocking jobs
/// that write into it (see [`blocking_in`]).
fn new_scratch(opts: &FetchOptions) -> Result<Arc<TempDir>, ArtifactError> {
    let parent = opts
        .scratch_parent
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("wick-model-")
        .tempdir_in(&parent)
        .map(Arc::new)
        .map_err(|e| ArtifactError::io(&parent, e))
}

/// Runs `job` on a blocking thread that co-owns the scratch directory: if the fetch future is
/// dropped mid-way (shutdown), the directory is deleted only once `job` stops writing into it,
/// instead of racing it.
async fn blocking_in<T: Send + 'static>(
    scratch: &Arc<TempDir>,
    job: impl FnOnce(&Path) -> T + Send + 'static,
) -> T {
    let shared = Arc::clone(scratch);
    tokio::task::spawn_blocking(move || job(shared.path()))
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// The fetched model, owning its scratch directory.
fn finish(scratch: Arc<TempDir>, stats: FetchStats) -> Result<LocalModel, ArtifactError> {
    let dir = scratch.path().to_owned();
    // Every blocking job has returned, dropping its handle, before its result was delivered.
    let scratch = Arc::try_unwrap(scratch)
        .map_err(|_| ArtifactError::io(&dir, io::Error::other("scratch directory still in use")))?;
    Ok(LocalModel {
        dir,
        scratch: Some(scratch),
        stats,
    })
}

/// The blocking unpacker's view of the download: a `Read` over the chunks in order. A
/// download error is parked in `failure` for the caller and surfaces here as an I/O error.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, ArtifactError>>,
    chunk: Bytes,
    failure: Arc<Mutex<Option<ArtifactError>>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(err)) => {
                    if let Ok(mut slot) = self.failure.lock() {
                        *slot = Some(err);
                    }
                    return Err(io::Error::other("the download failed"));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
