//! Reading a request body under the payload limit. A body larger than the spooling threshold
//! goes to an unnamed temporary file in `$TMPDIR` (written off the async runtime, deleted when
//! the request ends) instead of RAM, so a gigabyte-sized asynchronous-inference request costs
//! disk, not memory.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use super::error::ApiError;
use super::server::stopped;
use crate::codec::payload::Payload;

/// A body this many times over the limit is not drained any further: the connection closes.
const MAX_DRAIN_FACTOR: u64 = 16;
/// Spooled bytes are written to the file in pieces this large.
const SPOOL_WRITE_BYTES: usize = 1 << 20;

/// The size limits of a body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    /// Largest body accepted (`u64::MAX`: no cap).
    pub(super) max_payload_bytes: u64,
    /// Bodies larger than this go to a temporary file.
    pub(super) spool_threshold_bytes: u64,
    /// The longest pause between two pieces of the body.
    pub(super) idle_timeout: Duration,
}

struct Spool {
    file: File,
    pending: Vec<u8>,
    written_bytes: u64,
}

/// Reads the body. A body over the limit is read to its end and discarded (up to a bound) so
/// the client gets a JSON 413 on a connection that stays usable, rather than a reset socket in
/// the middle of its upload. A malformed or cut-short body is the client's fault (400), so is
/// one that stalls (408); a shutdown stops waiting for the rest (503).
pub(super) async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limits: BodyLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Payload, ApiError> {
    let limit = limits.max_payload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::PayloadTooLarge {
        limit_bytes: limit,
        limit_mb: limit / (1024 * 1024),
    };
    let mut is_over = declared.is_some_and(|len| len > limit);
    let mut memory = Vec::with_capacity(
        declared
            .filter(|len| *len <= limit.min(limits.spool_threshold_bytes))
            .unwrap_or(0) as usize,
    );
    let mut spool: Option<Spool> = None;
    let mut seen: u64 = 0;
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(limits.idle_timeout, body.frame()) => frame,
            () = stopped(&mut shutdown) => return Err(ApiError::ShuttingDown),
        };
        let frame = match frame {
            Err(_) => {
                return Err(ApiError::BodyStalled {
                    idle_secs: limits.idle_timeout.as_secs(),
                    received_bytes: seen,
                })
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| ApiError::MalformedBody {
                reason: body_error_reason(&e),
                received_bytes: seen,
            })?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit {
            is_over = true;
            memory = Vec::new();
            spool = None;
        }
        if is_over {
            if seen > limit.saturating_mul(MAX_DRAIN_FACTOR) {
                return Err(too_large());
            }
            continue;
        }
        if let Some(mut current) = spool.take() {
            current.pending.extend_from_slice(&data);
            spool = Some(if current.pending.len() >= SPOOL_WRITE_BYTES {
                flush(current).await?
            } else {
                current
            });
            continue;
        }
        memory.extend_from_slice(&data);
        if memory.len() as u64 > limits.spool_threshold_bytes {
            let file = blocking(tempfile::tempfile).await?;
            let pending = std::mem::take(&mut memory);
            spool = Some(
                flush(Spool {
                    file,
                    pending,
                    written_bytes: 0,
                })
                .await?,
            );
        }
    }
    if is_over {
        return Err(too_large());
    }
    match spool {
        Some(current) => {
            let done = flush(current).await?;
            Ok(Payload::Spooled {
                file: done.file,
                len_bytes: done.written_bytes,
            })
        }
        None => Ok(Payload::Memory(memory)),
    }
}

/// hyper's reason for a broken body ("invalid chunk size line", "connection closed before
/// message completed"), from the innermost error.
fn body_error_reason(err: &axum::Error) -> String {
    let mut source: &dyn std::error::Error = err;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}

/// Writes the pending bytes to the file on the blocking pool.
async fn flush(spool: Spool) -> Result<Spool, ApiError> {
    let Spool {
        mut file,
        pending,
        written_bytes,
    } = spool;
    let len = pending.len() as u64;
    let file = blocking(move || file.write_all(&pending).map(|()| file)).await?;
    Ok(Spool {
        file,
        pending: Vec::with_capacity(SPOOL_WRITE_BYTES),
        written_bytes: written_bytes + len,
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("spooling task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("spooling the request body to $TMPDIR: {e}")))
}
