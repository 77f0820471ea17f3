//! Model artifacts: turn an [`ArtifactUri`] (local directory, local archive, S3 prefix or S3
//! archive) into a local package directory that the model layer can load, and publish archives
//! back to S3. Everything after [`fetch`] sees only a directory.
//!
//! Downloads and unpacks go to a private scratch directory under `$TMPDIR` (never into the
//! model directory, which is read-only on some SageMaker endpoints), removed when the returned
//! [`LocalModel`] is dropped. Only [`s3`] knows about AWS; archives are untrusted input
//! ([`archive`]).

pub mod archive;
mod fetch;
mod progress;
mod s3;
mod uri;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use archive::{ArchiveError, ArchiveLimits, PackStats, UnpackStats};
pub use fetch::{fetch, upload, FetchStats, LocalModel, UploadStats};
pub use uri::{ArtifactUri, SAGEMAKER_MODEL_DIR};

/// The archive file name SageMaker uses; unpacked when found alone in a local model directory.
pub const MODEL_ARCHIVE_NAME: &str = "model.tar.gz";

/// How [`fetch`] works. `Default` suits production: the standard AWS chain, `$TMPDIR`.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Where the scratch directory is created; `None` = `$TMPDIR` (`/tmp`).
    pub scratch_parent: Option<PathBuf>,
    /// Caps for unpacking archives.
    pub limits: ArchiveLimits,
    /// Concurrency, part sizes, retries, progress logging.
    pub transfer: TransferOptions,
    /// Explicit S3 settings instead of the environment (tests, tools); normally all `None`.
    pub s3: S3Overrides,
}

/// Transfer tuning shared by downloads and uploads.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Requests in flight at once (whole objects or parts). Streaming an archive also buffers
    /// up to this many parts ahead of the unpacker.
    pub concurrency: usize,
    /// Objects at least this large download (and upload) in ranged parts.
    pub ranged_threshold_bytes: u64,
    /// Size of one part.
    pub part_bytes: u64,
    /// Attempts per request, the first included, with exponential backoff between them.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled per attempt.
    pub initial_backoff: Duration,
    /// How often progress is logged.
    pub progress_interval: Duration,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            concurrency: 8,
            ranged_threshold_bytes: 16 << 20,
            part_bytes: 8 << 20,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            progress_interval: Duration::from_secs(10),
        }
    }
}

/// S3 client settings that replace what the standard AWS chain would find.
#[derive(Clone, Default)]
pub struct S3Overrides {
    /// Endpoint URL (MinIO, a test server); otherwise `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Region; otherwise `AWS_REGION`, the profile or instance metadata.
    pub region: Option<String>,
    /// Static keys; otherwise the credential chain.
    pub credentials: Option<StaticCredentials>,
    /// Path-style addressing (`host/bucket/key`); default: on when an endpoint URL is set.
    pub force_path_style: Option<bool>,
}

/// An access key pair.
#[derive(Clone)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never logged).
    pub secret_access_key: String,
}

impl fmt::Debug for S3Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Overrides")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| &c.access_key_id),
            )
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

/// Everything that can go wrong fetching or publishing a model.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The URI cannot be parsed.
    #[error("invalid model URI `{uri}`: {reason}")]
    InvalidUri {
        /// The text given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local path does not exist.
    #[error("`{}` does not exist", path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// A local file operation failed.
    #[error("`{}`: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error (in the message, not repeated as a source).
        cause: std::io::Error,
    },
    /// An S3 request failed (after retries, for transient errors).
    #[error("S3 {operation} `{uri}` failed: {}", describe_s3(code.as_deref(), *status, message))]
    S3 {
        /// `s3://bucket/key` of the request.
        uri: String,
        /// The S3 operation, e.g. `GetObject`.
        operation: &'static str,
        /// The S3 error code (`NoSuchKey`, `AccessDenied`, `SignatureDoesNotMatch`...), or the
        /// SDK's failure kind (`DispatchFailure`, `TimeoutError`...) when no response came.
        code: Option<String>,
        /// HTTP status, when a response came.
        status: Option<u16>,
        /// The service's message or the SDK's full error chain.
        message: String,
    },
    /// An S3 prefix with no objects under it.
    #[error("no objects under `{uri}`")]
    EmptyPrefix {
        /// The prefix URI.
        uri: String,
    },
    /// An S3 key that cannot become a path inside the scratch directory.
    #[error("refusing S3 key `{key}` under `{uri}`: {reason}")]
    UnsafeKey {
        /// The prefix URI.
        uri: String,
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// An archive was refused or could not be read.
    #[error("unpacking `{uri}`: {cause}")]
    Archive {
        /// The archive's URI or path.
        uri: String,
        /// What went wrong (in the message, not repeated as a source).
        cause: ArchiveError,
    },
}

impl ArtifactError {
    /// The S3 error code, if this is an S3 failure (`NoSuchKey`, `AccessDenied`...).
    pub fn s3_code(&self) -> Option<&str> {
        match self {
            ArtifactError::S3 { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl AsRef<Path>, cause: std::io::Error) -> Self {
        ArtifactError::Io {
            path: path.as_ref().to_owned(),
            cause,
        }
    }
}

fn describe_s3(code: Option<&str>, status: Option<u16>, message: &str) -> String {
    let mut text = code.unwrap_or("no error code").to_owned();
    if let Some(status) = status {
        text.push_str(&format!(" (HTTP {status})"));
    }
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(message);
    }
    text
}

/// The local path for `key` listed under `prefix` (SageMaker `S3Prefix`: the key relative to
/// the prefix, `/` as directory separator). `Ok(None)` for directory markers (`dir/`).
/// Refuses what SageMaker refuses: empty, `.` or `..` components, and names over 255 bytes.
pub(crate) fn key_path(prefix: &str, key: &str) -> Result<Option<PathBuf>, &'static str> {
    let rel = key
        .strip_prefix(prefix)
        .ok_or("the key is not under the prefix")?;
    if rel.is_empty() {
        return Ok(None);
    }
    let (rel, is_marker) = match rel.strip_suffix('/') {
        Some(dir) => (dir, true),
        None => (rel, false),
    };
    let mut path = PathBuf::new();
    for part in rel.split('/') {
        match part {
            "" => return Err("empty path component (absolute path or `//`)"),
            "." | ".." => return Err("`.` or `..` path component"),
            _ if part.len() > 255 => return Err("path component longer than 255 bytes"),
            _ if part.contains('\0') => return Err("NUL byte in the key"),
            _ => path.push(part),
        }
    }
    Ok(if is_marker { None } else { Some(path) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_relative_paths() {
        assert_eq!(
            key_path("models/a/", "models/a/config.json"),
            Ok(Some(PathBuf::from("config.json")))
        );
        assert_eq!(
            key_path("models/a/", "models/a/sub/dir/w.pth"),
            Ok(Some(PathBuf::from("sub/dir/w.pth")))
        );
        assert_eq!(key_path("", "x/y"), Ok(Some(PathBuf::from("x/y"))));
        assert_eq!(key_path("models/a/", "models/a/"), Ok(None));
        assert_eq!(key_path("models/a/", "models/a/sub/"), Ok(None));
    }

    #[test]
    fn unsafe_keys_are_refused() {
        for key in [
            "p//etc/passwd",
            "p/../x",
            "p/a/../../x",
            "p/./x",
            "p/a//b",
            "q/x",
        ] {
            assert!(key_path("p/", key).is_err(), "{key}");
        }
        assert!(key_path("", "/abs").is_err());
        assert!(key_path("", &"n".repeat(256)).is_err());
    }

    #[test]
    fn s3_errors_name_the_uri_and_code() {
        let err = ArtifactError::S3 {
            uri: "s3://b/k.tar.gz".into(),
            operation: "GetObject",
            code: Some("NoSuchKey".into()),
            status: Some(404),
            message: "The specified key does not exist.".into(),
        };
        assert_eq!(
            err.to_string(),
            "S3 GetObject `s3://b/k.tar.gz` failed: NoSuchKey (HTTP 404): The specified key does not exist."
        );
        assert_eq!(err.s3_code(), Some("NoSuchKey"));
    }

    #[test]
    fn overrides_debug_hides_the_secret() {
        let overrides = S3Overrides {
            credentials: Some(StaticCredentials {
                access_key_id: "AKID".into(),
                secret_access_key: "very-secret".into(),
            }),
            ..Default::default()
        };
        let text = format!("{overrides:?}");
        assert!(text.contains("AKID") && !text.contains("very-secret"));
    }
}
