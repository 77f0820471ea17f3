//! One segmentation request whose image is over `--max-image-pixels`: a raw PNG or TIFF body
//! (aerial imagery, 20,000 x 20,000 and up) is read row by row from the (spooled) body and its
//! label map PNG is written row by row, so memory holds a band of rows, never the image or
//! the map. Up to `--max-streamed-image-pixels`; only `Accept: image/png` (the label map) can
//! be answered this way, every other answer would hold each pixel in memory and gets a 413
//! naming the one that works.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::engine::EngineError;
use super::error::ApiError;
use super::metrics::StageTimes;
use super::state::AppState;
use crate::codec::media::ResponseFormat;
use crate::codec::options::{ImageOutput, RawOptions, RequestOptions};
use crate::codec::payload::Payload;
use crate::model::package::Task;
use crate::model::preprocess::rows::{open_rows, probe, StreamFormat};
use crate::model::preprocess::PreprocessError;
use crate::model::segment::StreamedImage;
use crate::model::{Input, ModelError};
use crate::render::LabelMapPngStream;

/// A PNG or TIFF body over the in-memory limit, from its header.
pub(super) struct Oversized {
    format: StreamFormat,
    width: u32,
    height: u32,
}

/// Reads the header of a raw image body: `Some` when it is a PNG or TIFF over `max_pixels`
/// (the caller then answers with [`answer`]), `None` for anything else. The payload comes back
/// either way.
pub(super) async fn oversized(
    payload: Payload,
    max_pixels: u64,
) -> Result<(Payload, Option<Oversized>), ApiError> {
    let look = move |mut payload: Payload| {
        let found = payload
            .peek(probe)
            .map_err(|e| ApiError::Internal(format!("reading the spooled body: {e}")))?;
        let oversized = found
            .filter(|&(_, w, h)| u64::from(w) * u64::from(h) > max_pixels)
            .map(|(format, width, height)| Oversized {
                format,
                width,
                height,
            });
        Ok((payload, oversized))
    };
    // A body in memory is probed in place (a few header bytes); only a spooled one reads the
    // disk, which belongs on the blocking pool.
    if matches!(payload, Payload::Memory(_)) {
        return look(payload);
    }
    tokio::task::spawn_blocking(move || look(payload))
        .await
        .map_err(|e| ApiError::Internal(format!("probing task failed: {e}")))?
}

/// Segments the image row by row on an inference worker and answers its label map PNG.
pub(super) async fn answer(
    state: &AppState,
    payload: Payload,
    image: &Oversized,
    format: ResponseFormat,
    attributes: &RawOptions,
    timings: &mut StageTimes,
) -> Result<Response, ApiError> {
    let config = state.config();
    let ready = state.ready().ok_or(ApiError::NotReady)?;
    let (width, height) = (image.width, image.height);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > config.max_streamed_image_pixels {
        return Err(ApiError::ImageTooLargeToStream {
            width,
            height,
            pixels,
            max_image_pixels: config.max_image_pixels,
            max_streamed_image_pixels: config.max_streamed_image_pixels,
        });
    }
    let predictor = Arc::clone(&ready.predictor);
    let options = RequestOptions::resolve(
        attributes,
        Task::Segmentation,
        predictor.labels(),
        config.default_top_k,
    )?;
    if format != ResponseFormat::Png || options.image_output == ImageOutput::Overlay {
        return Err(ApiError::StreamedAnswerFormat {
            width,
            height,
            asked: if format == ResponseFormat::Png {
                "an overlay"
            } else {
                format.content_type()
            },
        });
    }
    tracing::debug!(format = ?image.format, width, height, "segmenting a streamed image");
    let sink = LabelMapPngStream::new(width, height, predictor.is_binary(), options.voc_palette)?;
    let rows = tokio::task::spawn_blocking(move || {
        let reader = payload
            .into_seek_reader()
            .map_err(|e| ApiError::Internal(format!("reading the spooled body: {e}")))?;
        Ok::<_, ApiError>(open_rows(reader)?)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("opening task failed: {e}")))??;
    let streamed = Arc::new(StreamedImage::new(rows, Box::new(sink)));
    let input = Input::Streamed(Arc::clone(&streamed));
    let outcome = ready
        .engine
        .submit(vec![(input, options.inference.clone())])?
        .await
        .map_err(|_| ApiError::Engine(EngineError::Stopped))?
        .map_err(engine_error)?;
    timings.queue = Some(outcome.queue);
    timings.inference = Some(outcome.inference);
    let png = tokio::task::spawn_blocking(move || streamed.finish())
        .await
        .map_err(|e| ApiError::Internal(format!("encoding task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("finishing the label map: {e}")))?;
    if png.len() as u64 > config.max_payload_bytes {
        return Err(ApiError::ResponseTooLarge {
            size_bytes: png.len() as u64,
            limit_bytes: config.max_payload_bytes,
            smaller: "none for an image this large; raise SAGEMAKER_MAX_PAYLOAD_IN_MB",
        });
    }
    Ok(([(header::CONTENT_TYPE, format.content_type())], png).into_response())
}

/// A damaged image found while reading it row by row is the client's fault (400), as it is
/// when decoded whole; any other failure stays the engine's.
fn engine_error(err: EngineError) -> ApiError {
    if let EngineError::Inference(model) = &err {
        if let ModelError::Preprocess(inner) = &**model {
            let copy = match inner {
                PreprocessError::StreamCorrupt { format, reason } => {
                    Some(PreprocessError::StreamCorrupt {
                        format,
                        reason: reason.clone(),
                    })
                }
                PreprocessError::NotStreamable { format, reason } => {
                    Some(PreprocessError::NotStreamable {
                        format,
                        reason: reason.clone(),
                    })
                }
                _ => None,
            };
            if let Some(copy) = copy {
                return ApiError::Image(copy);
            }
        }
    }
    ApiError::Engine(err)
}
