//! [`ArtifactUri`]: where a model package comes from, parsed once from `--model-uri`.
//! Pure parsing: nothing here touches the file system or the network.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::ArtifactError;

/// Where SageMaker puts the model (its `ModelDataUrl` archive, already extracted): the default
/// model location when no URI is given.
pub const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

/// File names (and S3 keys) treated as archives.
const ARCHIVE_SUFFIXES: &[&str] = &[".tar.gz", ".tgz", ".tar"];

/// A model package location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactUri {
    /// A local directory, or a local archive file; which one is decided when fetching (a
    /// directory holding only a `model.tar.gz` is unpacked too). `file:///abs/path` is accepted.
    Local(PathBuf),
    /// Every object under `s3://bucket/prefix/`, keys below the prefix recreated as
    /// sub-directories (SageMaker's uncompressed `S3Prefix` layout). `prefix` is empty (the whole
    /// bucket) or ends with `/`.
    S3Prefix {
        /// Bucket name.
        bucket: String,
        /// Key prefix, empty or ending with `/`.
        prefix: String,
    },
    /// One archive object, `s3://bucket/key.tar.gz` (also `.tgz`, or an uncompressed `.tar`).
    S3Archive {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
}

impl ArtifactUri {
    /// Whether fetching needs the network (and AWS credentials).
    pub fn is_s3(&self) -> bool {
        !matches!(self, ArtifactUri::Local(_))
    }
}

impl Default for ArtifactUri {
    /// `/opt/ml/model`, where SageMaker extracts the model.
    fn default() -> Self {
        ArtifactUri::Local(PathBuf::from(SAGEMAKER_MODEL_DIR))
    }
}

impl fmt::Display for ArtifactUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactUri::Local(path) => write!(f, "{}", path.display()),
            ArtifactUri::S3Prefix { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            ArtifactUri::S3Archive { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Whether a file name or key names an archive wick unpacks.
pub(crate) fn is_archive_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ARCHIVE_SUFFIXES
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

impl FromStr for ArtifactUri {
    type Err = ArtifactError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ArtifactError::InvalidUri {
            uri: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(invalid("the URI is empty"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket name after `s3://`"));
            }
            if bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("the bucket name contains white space"));
            }
            let bucket = bucket.to_owned();
            return if key.is_empty() || key.ends_with('/') {
                Ok(ArtifactUri::S3Prefix {
                    bucket,
                    prefix: key.to_owned(),
                })
            } else if is_archive_name(key) {
                Ok(ArtifactUri::S3Archive {
                    bucket,
                    key: key.to_owned(),
                })
            } else {
                // SageMaker's own S3Prefix URIs must end with `/` too; guessing would also match
                // sibling prefixes (`models/a` is a prefix of `models/ab/...`).
                Err(invalid(
                    "name a prefix ending with `/` (every object below it) or a `.tar.gz` object",
                ))
            };
        }
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("`file://` URIs take an absolute path"));
            }
            return Ok(ArtifactUri::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "unsupported scheme; use a local path, `s3://` or `file://`",
                ));
            }
        }
        Ok(ArtifactUri::Local(PathBuf::from(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ArtifactUri {
        text.parse().unwrap()
    }

    #[test]
    fn s3_prefixes_and_archives() {
        assert_eq!(
            parse("s3://bucket/models/lite0/"),
            ArtifactUri::S3Prefix {
                bucket: "bucket".into(),
                prefix: "models/lite0/".into()
            }
        );
        assert_eq!(
            parse("s3://bucket"),
            ArtifactUri::S3Prefix {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse("s3://bucket/"),
            ArtifactUri::S3Prefix {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse("s3://b/job/output/model.tar.gz"),
            ArtifactUri::S3Archive {
                bucket: "b".into(),
                key: "job/output/model.tar.gz".into()
            }
        );
        assert!(matches!(
            parse("s3://b/m.TGZ"),
            ArtifactUri::S3Archive { .. }
        ));
        assert!(matches!(
            parse("s3://b/m.tar"),
            ArtifactUri::S3Archive { .. }
        ));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "s3://bucket/models/lite0/",
            "s3://bucket/",
            "s3://b/x/model.tar.gz",
            "/opt/ml/model",
            "relative/dir",
        ] {
            assert_eq!(parse(text).to_string(), text);
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            parse("/opt/ml/model"),
            ArtifactUri::Local("/opt/ml/model".into())
        );
        assert_eq!(
            parse("file:///srv/model.tar.gz"),
            ArtifactUri::Local("/srv/model.tar.gz".into())
        );
        assert_eq!(
            parse("./model.tar.gz"),
            ArtifactUri::Local("./model.tar.gz".into())
        );
        assert_eq!(ArtifactUri::default(), parse("/opt/ml/model"));
        assert!(!parse("/x").is_s3());
        assert!(parse("s3://b/").is_s3());
    }

    #[test]
    fn refusals_say_why() {
        for (text, needle) in [
            ("", "empty"),
            ("s3://", "no bucket"),
            ("s3:///key.tar.gz", "no bucket"),
            ("s3://b/models/lite0", "ending with `/`"),
            ("s3://b/model.zip", "ending with `/`"),
            ("https://example.com/model.tar.gz", "unsupported scheme"),
            ("gs://b/model.tar.gz", "unsupported scheme"),
            ("file://relative", "absolute"),
        ] {
            let err = text.parse::<ArtifactUri>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(&format!("`{text}`")), "{text}: {err}");
        }
    }
}
