//! SDK errors as [`ArtifactError::S3`]: the S3 error code and message when S3 answered (the
//! SDK's own `Display` says only "service error"), otherwise the SDK's failure kind and the
//! cause chain on one line.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::artifacts::ArtifactError;

/// An SDK error as a clear [`ArtifactError::S3`]: the S3 error code and message when S3
/// answered, the SDK's failure kind and full cause chain when it did not.
pub(super) fn sdk_error<E>(
    operation: &'static str,
    uri: &str,
    err: &SdkError<E, HttpResponse>,
) -> ArtifactError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let no_credentials = chain(err).any(|e| e.is::<CredentialsError>());
    let code = err.code().map(str::to_owned).or_else(|| {
        Some(
            match err {
                _ if no_credentials => "CredentialsError",
                SdkError::ConstructionFailure(_) => "ConstructionFailure",
                SdkError::TimeoutError(_) => "TimeoutError",
                SdkError::DispatchFailure(_) => "DispatchFailure",
                SdkError::ResponseError(_) => "ResponseError",
                _ => return None,
            }
            .to_owned(),
        )
    });
    let mut message = match (err, err.message()) {
        (SdkError::ServiceError(_), Some(message)) => message.to_owned(),
        // The code and status say it all (e.g. HEAD responses have no body).
        (SdkError::ServiceError(_), None) if code.is_some() => String::new(),
        _ => one_line(err),
    };
    let wrong_region = status == Some(301)
        || matches!(
            code.as_deref(),
            Some("PermanentRedirect" | "AuthorizationHeaderMalformed")
        );
    if let Some(region) = err
        .raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
        .filter(|_| wrong_region)
    {
        message.push_str(&format!(
            " (the bucket is in region `{region}`: set AWS_REGION={region})"
        ));
    }
    ArtifactError::S3 {
        uri: uri.to_owned(),
        operation,
        code,
        status,
        message,
    }
}

/// An error and its sources.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The cause chain on one line (`a: b: c`), repeats dropped: what `DisplayErrorContext` says,
/// without its Debug dump or the credential chain's line breaks.
pub(super) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in chain(err) {
        let text = e.to_string().replace(":\n", ": ").replace('\n', "; ");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
