//! Uploads for `wick package --upload`: one PutObject below the ranged threshold, otherwise a
//! multipart upload whose parts stream from the file concurrently (aborted on failure, so no
//! orphaned parts keep costing storage).

use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::task::JoinSet;

use super::{sdk_error, Store};
use crate::artifacts::progress::Progress;
use crate::artifacts::ArtifactError;

/// S3 allows at most 10,000 parts per upload; larger files get larger parts.
const MAX_PARTS: u64 = 10_000;

impl Store {
    /// Uploads `file` to `s3://bucket/key`; returns the number of parts (1 for PutObject).
    pub(in crate::artifacts) async fn upload(
        &self,
        file: &Path,
        bucket: &str,
        key: &str,
        progress: &Arc<Progress>,
    ) -> Result<u64, ArtifactError> {
        let uri = format!("s3://{bucket}/{key}");
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| ArtifactError::io(file, e))?
            .len();
        progress.expect(1, size);
        if size < self.transfer.ranged_threshold_bytes {
            let body = file_body(file, 0, size).await?;
            progress.request();
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body)
                .send()
                .await
                .map_err(|e| sdk_error("PutObject", &uri, &e))?;
            progress.add_bytes(size);
            progress.object_done();
            return Ok(1);
        }

        progress.request();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error("CreateMultipartUpload", &uri, &e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self
            .upload_parts(file, size, (bucket, key, &upload_id), progress)
            .await;
        let parts = match result {
            Ok(parts) => parts,
            Err(err) => {
                let aborted = self
                    .client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let Err(abort) = aborted {
                    let abort = sdk_error("AbortMultipartUpload", &uri, &abort);
                    tracing::warn!(error = %abort, "could not abort the failed multipart upload");
                }
                return Err(err);
            }
        };
        let count = parts.len() as u64;
        progress.request();
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("CompleteMultipartUpload", &uri, &e))?;
        progress.object_done();
        Ok(count)
    }

    async fn upload_parts(
        &self,
        file: &Path,
        size: u64,
        (bucket, key, upload_id): (&str, &str, &str),
        progress: &Arc<Progress>,
    ) -> Result<Vec<CompletedPart>, ArtifactError> {
        let part_bytes = self
            .transfer
            .part_bytes
            .max(size.div_ceil(MAX_PARTS))
            .max(1);
        let mut pending: Vec<(i32, u64)> = (0..size.div_ceil(part_bytes))
            .map(|i| ((i + 1) as i32, i * part_bytes))
            .rev()
            .collect();
        let mut running = JoinSet::new();
        let mut done = Vec::new();
        loop {
            while running.len() < self.transfer.concurrency.max(1) {
                let Some((number, offset)) = pending.pop() else {
                    break;
                };
                let length = part_bytes.min(size - offset);
                let (store, file, progress) = (self.clone(), file.to_owned(), Arc::clone(progress));
                let (bucket, key, upload_id) =
                    (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
                running.spawn(async move {
                    let uri = format!("s3://{bucket}/{key}");
                    // A file-backed body: the SDK can replay it on retry, nothing is buffered.
                    let body = file_body(&file, offset, length).await?;
                    progress.request();
                    let output = store
                        .client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| sdk_error("UploadPart", &uri, &e))?;
                    progress.add_bytes(length);
                    Ok::<_, ArtifactError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(output.e_tag().map(str::to_owned))
                            .build(),
                    )
                });
            }
            match running.join_next().await {
                None => break,
                Some(Ok(Ok(part))) => done.push(part),
                Some(Ok(Err(err))) => return Err(err),
                Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            }
        }
        done.sort_by_key(|part| part.part_number());
        Ok(done)
    }
}

async fn file_body(file: &Path, offset: u64, length: u64) -> Result<ByteStream, ArtifactError> {
    ByteStream::read_from()
        .path(file)
        .offset(offset)
        .length(Length::Exact(length))
        .build()
        .await
        .map_err(|e| ArtifactError::io(file, std::io::Error::other(e)))
}
