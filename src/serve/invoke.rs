//! One `/invocations` request from body to answer. The body (in memory or spooled) is read as
//! records, window by window: each window is decoded and prepared on the blocking pool while
//! the previous one is in the engine, so a request of any size holds at most two windows of
//! images (a window is `max_batch_size` records or 16 MiB of them, whichever comes first). A record that fails (an undecodable image, a bad option) becomes an error in its
//! place, or fails the whole request, as `on_record_error` says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use image::RgbImage;
use rayon::prelude::*;
use tokio::task::JoinHandle;

use super::body::{read_body, BodyLimits};
use super::engine::{EngineError, Predictor};
use super::error::ApiError;
use super::large;
use super::metrics::StageTimes;
use super::multipart;
use super::state::AppState;
use crate::codec::assemble::AnswerBody;
use crate::codec::body::parse_body;
use crate::codec::error::CodecError;
use crate::codec::media::{RequestFormat, ResponseFormat};
use crate::codec::options::{RawOptions, RecordErrors, RequestOptions};
use crate::codec::request::{BodyShape, RawImage, Record, Records};
use crate::codec::respond::Answer;
use crate::model::package::Task;
use crate::model::preprocess::{decode, DecodeLimits};
use crate::model::{Input, ModelError};

/// The response header SageMaker passes back to the client.
pub(super) const CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";
/// A window stops taking records once it holds this many bytes of them: a request of large
/// images holds a few at a time, whatever its size.
const WINDOW_BYTES: usize = 16 << 20;
/// While a request's later windows wait for room in a full queue, it looks this often.
const QUEUE_POLL: Duration = Duration::from_millis(5);

/// A record's image (kept for pictures), its size and its resolved options.
type Resolved = (Option<Arc<RgbImage>>, Option<(u32, u32)>, RequestOptions);

/// One record ready for the engine.
struct Prepared {
    input: Input,
    /// Kept for pictures (segmentation, and detection answered with one).
    image: Option<Arc<RgbImage>>,
    /// The decoded image's `(width, height)` (segmentation and detection).
    size: Option<(u32, u32)>,
    parameters: RawOptions,
}

/// One window of records, in order, and what is left of the body.
struct Window {
    items: Vec<Result<Prepared, ApiError>>,
    rest: Option<Records>,
    decode: Duration,
    preprocess: Duration,
}

/// What every window of one request shares.
struct Plan {
    task: Task,
    format: ResponseFormat,
    shape: BodyShape,
    record_errors: RecordErrors,
    request_options: RawOptions,
    base_options: RequestOptions,
    default_top_k: usize,
}

pub(super) async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    timings: &mut StageTimes,
) -> Result<Response, ApiError> {
    let config = state.config();
    // The body is read before anything can fail: an error answered over an unread body makes
    // hyper close the connection, and the client sees a broken pipe instead of the JSON error.
    let limits = BodyLimits {
        max_payload_bytes: config.max_payload_bytes,
        spool_threshold_bytes: config.spool_threshold_bytes,
        idle_timeout: config.body_read_timeout,
    };
    let payload = read_body(body, headers, limits, state.shutdown_watch()).await?;
    tracing::debug!(
        content_type = ?headers.get(header::CONTENT_TYPE),
        accept = ?headers.get(header::ACCEPT),
        custom_attributes = ?headers.get(CUSTOM_ATTRIBUTES),
        body_bytes = payload.len_bytes(),
        "request received"
    );
    let ready = state.ready().ok_or(ApiError::NotReady)?;
    let header_text = |name| {
        headers.get(name).map(|v| {
            v.to_str().map_err(|_| CodecError::InvalidParameter {
                name: "headers",
                expected: "visible ASCII",
                value: format!("{name} with non-ASCII bytes"),
            })
        })
    };
    let attributes =
        RawOptions::from_custom_attributes(header_text(CUSTOM_ATTRIBUTES).transpose()?)?;
    let content_type = header_text(header::CONTENT_TYPE.as_str()).transpose()?;
    let boundary = multipart::boundary(content_type).transpose()?;
    let request_format = match boundary {
        Some(_) => RequestFormat::Image,
        None => RequestFormat::from_content_type(content_type)?,
    };
    let predictor = Arc::clone(&ready.predictor);
    let task = predictor.task();
    let default_format = Some(config.default_response)
        .filter(|f| f.suits(task))
        .unwrap_or(ResponseFormat::Json);
    let format = ResponseFormat::negotiate(
        header_text(header::ACCEPT.as_str()).transpose()?,
        default_format,
        task,
    )?;
    let record_errors = attributes.record_errors()?.unwrap_or(config.record_errors);
    let max_pixels = config.max_image_pixels;
    let mut payload = payload;
    if boundary.is_none() && request_format == RequestFormat::Image && task == Task::Segmentation {
        let (body, oversized) = large::oversized(payload, max_pixels).await?;
        if let Some(image) = oversized {
            return large::answer(state, body, &image, format, &attributes, timings).await;
        }
        payload = body;
    }
    let span = tracing::Span::current();
    let parsed = match boundary {
        // A form's parts are split in memory (a spooled form is read back first).
        Some(boundary) => {
            let bytes = tokio::task::spawn_blocking(move || payload.into_bytes())
                .await
                .map_err(|e| ApiError::Internal(format!("reading the form task failed: {e}")))?
                .map_err(|e| ApiError::Internal(format!("reading the spooled form: {e}")))?;
            multipart::parse(bytes.into(), boundary).await?
        }
        None => tokio::task::spawn_blocking(move || {
            span.in_scope(|| parse_body(request_format, payload, max_pixels))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("parsing task failed: {e}")))??,
    };
    let request_options = attributes.merge(parsed.parameters);
    // The request's own options apply to every record: a bad one fails the whole request.
    let base_options = RequestOptions::resolve(
        &request_options,
        task,
        predictor.labels(),
        config.default_top_k,
    )?;
    let plan = Arc::new(Plan {
        task,
        format,
        shape: parsed.shape,
        record_errors,
        request_options,
        base_options,
        default_top_k: config.default_top_k,
    });
    let window_size = config.max_batch_size.max(2);
    let mut answer = AnswerBody::new(format, parsed.shape, task, predictor.labels().len());
    // Pictures are drawn on the decoded image; every other answer needs only its size.
    let draws_pictures = format.is_image();
    let mut next = Some(spawn_window(
        state,
        &predictor,
        parsed.records,
        window_size,
        draws_pictures,
    ));
    while let Some(pending) = next.take() {
        let window = pending
            .await
            .map_err(|e| ApiError::Internal(format!("preprocessing task failed: {e}")))??;
        if window.items.is_empty() {
            break;
        }
        if format.is_single_image(task) && (answer.records() > 0 || window.items.len() != 1) {
            return Err(CodecError::OneImageOnly {
                accept: format.content_type(),
                images: answer.records() + window.items.len(),
            }
            .into());
        }
        // The next window is decoded while this one is in the engine.
        next = window
            .rest
            .map(|rest| spawn_window(state, &predictor, rest, window_size, draws_pictures));
        add_time(&mut timings.decode, window.decode);
        add_time(&mut timings.preprocess, window.preprocess);
        let is_first = answer.records() == 0;
        answer = run_window(state, &plan, window.items, is_first, answer, timings).await?;
    }
    if answer.len_bytes() as u64 > config.max_payload_bytes {
        return Err(ApiError::ResponseTooLarge {
            size_bytes: answer.len_bytes() as u64,
            limit_bytes: config.max_payload_bytes,
            smaller: match task {
                Task::Segmentation => "Accept: image/png (a label map), or mask_format=rle",
                Task::Detection => "Accept: application/json, or Accept: image/jpeg",
                Task::Classification => "a smaller top_k",
            },
        });
    }
    Ok((
        [(header::CONTENT_TYPE, format.content_type())],
        answer.finish(),
    )
        .into_response())
}

/// Reads, decodes and prepares up to `size` records on the blocking pool (one decode permit
/// per window: decoding never takes more than the cores).
fn spawn_window(
    state: &AppState,
    predictor: &Arc<dyn Predictor>,
    records: Records,
    size: usize,
    draws_pictures: bool,
) -> JoinHandle<Result<Window, ApiError>> {
    let state = state.clone();
    let predictor = Arc::clone(predictor);
    let span = tracing::Span::current();
    let max_pixels = state.config().max_image_pixels;
    tokio::spawn(async move {
        let _permit = state
            .decode_permits()
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(format!("decode permits closed: {e}")))?;
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| prepare_window(records, size, max_pixels, draws_pictures, &*predictor))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("preprocessing task failed: {e}")))
    })
}

fn prepare_window(
    mut records: Records,
    size: usize,
    max_pixels: u64,
    draws_pictures: bool,
    predictor: &dyn Predictor,
) -> Window {
    let mut raw: Vec<Result<Record, CodecError>> = Vec::with_capacity(size);
    let mut window_bytes = 0;
    let mut is_exhausted = false;
    while raw.len() < size && window_bytes < WINDOW_BYTES {
        let Some(record) = records.next() else {
            is_exhausted = true;
            break;
        };
        window_bytes += match &record {
            Ok(Record {
                image: RawImage::Encoded(bytes),
                ..
            }) => bytes.len(),
            Ok(Record {
                image: RawImage::Pixels(pixels),
                ..
            }) => pixels.as_raw().len(),
            Err(_) => 0,
        };
        raw.push(record);
    }
    let rest = (!is_exhausted).then_some(records);
    let limits = DecodeLimits { max_pixels };
    let decode_one = |record: Result<Record, CodecError>| {
        let record = record?;
        let image = match record.image {
            RawImage::Encoded(bytes) => decode(&bytes, &limits)?,
            RawImage::Pixels(pixels) => pixels,
        };
        Ok((image, record.parameters))
    };
    // A single image stays on this blocking thread: handing it to rayon would queue it behind
    // the inference running on rayon's pool, instead of overlapping with it.
    let started = Instant::now();
    let decoded: Vec<Result<_, ApiError>> = if raw.len() == 1 {
        raw.into_iter().map(decode_one).collect()
    } else {
        raw.into_par_iter().map(decode_one).collect()
    };
    let decode_time = started.elapsed();
    let started = Instant::now();
    let prepare_one = |decoded: Result<(RgbImage, RawOptions), ApiError>| {
        let (image, parameters) = decoded?;
        let input = if draws_pictures {
            predictor.prepare(image)
        } else {
            predictor.prepare_sized(image)
        }
        .map_err(model_error)?;
        let (image, size) = match &input {
            Input::Image(image) => (Some(Arc::clone(image)), Some(image.dimensions())),
            Input::Letterboxed(letterboxed) => (None, Some(letterboxed.original_size())),
            Input::Tensor(_) | Input::Streamed(_) => (None, None),
        };
        Ok(Prepared {
            input,
            image,
            size,
            parameters,
        })
    };
    let items = if decoded.len() == 1 {
        decoded.into_iter().map(prepare_one).collect()
    } else {
        decoded.into_par_iter().map(prepare_one).collect()
    };
    Window {
        items,
        rest,
        decode: decode_time,
        preprocess: started.elapsed(),
    }
}

/// Resolves each record's options, runs the window's good records through the engine and adds
/// every record's answer (or error) to `answer`, in order.
async fn run_window(
    state: &AppState,
    plan: &Arc<Plan>,
    items: Vec<Result<Prepared, ApiError>>,
    is_first: bool,
    mut answer: AnswerBody,
    timings: &mut StageTimes,
) -> Result<AnswerBody, ApiError> {
    let ready = state.ready().ok_or(ApiError::NotReady)?;
    let labels = ready.predictor.labels();
    let first_index = answer.records();
    let mut records: Vec<Result<Resolved, ApiError>> = Vec::with_capacity(items.len());
    let mut inputs = Vec::with_capacity(items.len());
    for (offset, item) in items.into_iter().enumerate() {
        let resolved = item.and_then(|prepared| {
            let options = record_options(plan, &prepared.parameters, labels)?;
            Ok((prepared, options))
        });
        match resolved {
            Ok((prepared, options)) => {
                inputs.push((prepared.input, options.inference.clone()));
                records.push(Ok((prepared.image, prepared.size, options)));
            }
            Err(err) if keeps_going(plan) => records.push(Err(err)),
            Err(err) => return Err(in_record(plan, first_index + offset, err)),
        }
    }
    let outputs = if inputs.is_empty() {
        Vec::new()
    } else {
        if !is_first {
            // This request is already admitted: its later windows wait for room.
            while !ready.engine.has_room(inputs.len()) {
                tokio::time::sleep(QUEUE_POLL).await;
            }
        }
        let outcome = ready
            .engine
            .submit(inputs)?
            .await
            .map_err(|_| ApiError::Engine(EngineError::Stopped))??;
        add_time(&mut timings.queue, outcome.queue);
        add_time(&mut timings.inference, outcome.inference);
        outcome.outputs
    };
    let predictor = Arc::clone(&ready.predictor);
    let encode = move || -> Result<AnswerBody, ApiError> {
        let mut outputs = outputs.iter();
        for record in &records {
            match record {
                Ok((image, image_size, options)) => {
                    let output = outputs.next().ok_or_else(|| {
                        ApiError::Internal("the engine returned too few outputs".into())
                    })?;
                    answer.push(&Answer {
                        output,
                        image: image.as_deref(),
                        image_size: *image_size,
                        options,
                        labels: predictor.labels(),
                        is_binary: predictor.is_binary(),
                    })?;
                }
                Err(err) => answer.push_error(&err.public_message(), err.status().1),
            }
        }
        Ok(answer)
    };
    // Classification JSON is a few hundred bytes; masks and pictures are real work and stay
    // off the async runtime.
    if plan.task == Task::Classification {
        encode()
    } else {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| ApiError::Internal(format!("encoding task failed: {e}")))?
    }
}

/// A record's options: the request's, with the record's own on top. A classification `.npy`
/// answer holds every class's score.
fn record_options(
    plan: &Plan,
    parameters: &RawOptions,
    labels: &[String],
) -> Result<RequestOptions, ApiError> {
    let mut options = if parameters.is_empty() {
        plan.base_options.clone()
    } else {
        let raw = plan.request_options.clone().merge(parameters.clone());
        RequestOptions::resolve(&raw, plan.task, labels, plan.default_top_k)?
    };
    if plan.format == ResponseFormat::Npy && plan.task == Task::Classification {
        options.inference.top_k = labels.len();
    }
    Ok(options)
}

/// Whether a failed record leaves the others answered: the policy says so, and the answer can
/// hold an error in a record's place (a list or lines of JSON).
fn keeps_going(plan: &Plan) -> bool {
    plan.record_errors == RecordErrors::Continue
        && plan.format.holds_record_errors()
        && plan.shape != BodyShape::One
}

/// A record's error as the whole request's: it names the record when there are several.
fn in_record(plan: &Plan, index: usize, err: ApiError) -> ApiError {
    match plan.shape {
        BodyShape::One => err,
        BodyShape::List | BodyShape::Lines => ApiError::Record {
            index,
            source: Box::new(err),
        },
    }
}

/// A preprocessing failure is the image's fault (400/413); anything else is ours.
fn model_error(err: ModelError) -> ApiError {
    match err {
        ModelError::Preprocess(err) => ApiError::Image(err),
        other => ApiError::Internal(format!("preparing the image: {other}")),
    }
}

/// Adds a window's stage time to the request's (a stage no window reached stays `None`).
fn add_time(total: &mut Option<Duration>, time: Duration) {
    *total = Some(total.unwrap_or_default() + time);
}
