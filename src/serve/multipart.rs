//! `multipart/form-data` request bodies, as browser forms and `curl -F file=@photo.jpg` send
//! them: every file part is an image (one part: one answer; several: a list answer), every
//! plain field an option read like a Custom-Attributes key (`top_k`, `threshold`, `format`, ...).
//! The body was read under the payload cap before it gets here, so the cap counts all of it.

use std::convert::Infallible;

use bytes::Bytes;
use serde_json::Value;

use crate::codec::options::RawOptions;
use crate::codec::request::{BodyShape, ParsedRequest, RawImage, Record};

/// What a multipart body can be wrong about (all 400s).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MultipartError {
    /// The body is not well-formed multipart/form-data.
    #[error("invalid multipart/form-data body: {0}")]
    Malformed(String),
    /// No part carries a file.
    #[error("the multipart/form-data body has no file part; send the image as a file field, e.g. `curl -F file=@photo.jpg`")]
    NoFile,
    /// A file part that is not an image wick decodes.
    #[error("form field `{field}`{} is not an image: {reason}; send JPEG, PNG, WebP, GIF, BMP or TIFF", filename.as_ref().map(|f| format!(" (file {f:?})")).unwrap_or_default())]
    NotAnImage {
        /// The part's field name.
        field: String,
        /// The part's file name, if it has one.
        filename: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A plain field whose value is not UTF-8 text.
    #[error("form field `{field}` is not UTF-8 text; options are text values such as top_k=3")]
    NotText {
        /// The part's field name.
        field: String,
    },
}

/// The boundary when `content_type` is `multipart/form-data`; `None` for any other type.
pub(crate) fn boundary(content_type: Option<&str>) -> Option<Result<String, MultipartError>> {
    let content_type = content_type?;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    Some(
        multer::parse_boundary(content_type)
            .map_err(|e| MultipartError::Malformed(format!("Content-Type `{content_type}`: {e}"))),
    )
}

/// Splits a whole multipart body into its images and options.
pub(crate) async fn parse(body: Bytes, boundary: String) -> Result<ParsedRequest, MultipartError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut images = Vec::new();
    let mut options = serde_json::Map::new();
    let malformed = |e: multer::Error| MultipartError::Malformed(e.to_string());
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        // A browser form's text input has no Content-Type; anything typed other than text is
        // meant as a file even without a file name.
        let is_file = filename.is_some()
            || field
                .content_type()
                .is_some_and(|mime| mime.essence_str() != "text/plain");
        let data = field.bytes().await.map_err(malformed)?;
        if is_file {
            // A form submitted with its file input left empty sends an empty, unnamed file.
            if data.is_empty() && filename.as_deref().unwrap_or_default().is_empty() {
                continue;
            }
            if let Err(reason) = check_image(&data) {
                return Err(MultipartError::NotAnImage {
                    field: name,
                    filename,
                    reason,
                });
            }
            images.push(RawImage::Encoded(data.to_vec()));
        } else {
            let text = std::str::from_utf8(&data).map_err(|_| MultipartError::NotText {
                field: name.clone(),
            })?;
            let key = name.trim().to_ascii_lowercase().replace('-', "_");
            options.insert(key, Value::String(text.trim().to_string()));
        }
    }
    if images.is_empty() {
        return Err(MultipartError::NoFile);
    }
    let shape = if images.len() > 1 {
        BodyShape::List
    } else {
        BodyShape::One
    };
    let records = images
        .into_iter()
        .map(|image| {
            Ok(Record {
                image,
                parameters: RawOptions::default(),
            })
        })
        .collect();
    Ok(ParsedRequest::from_records(
        records,
        shape,
        RawOptions::from_json(options),
    ))
}

/// Whether the bytes start like an image format wick decodes (the decoder has the last word).
fn check_image(data: &[u8]) -> Result<(), String> {
    if data.is_empty() {
        return Err("the file is empty".into());
    }
    match image::guess_format(data) {
        Ok(
            image::ImageFormat::Jpeg
            | image::ImageFormat::Png
            | image::ImageFormat::WebP
            | image::ImageFormat::Gif
            | image::ImageFormat::Bmp
            | image::ImageFormat::Tiff,
        ) => Ok(()),
        Ok(other) => Err(format!("{other:?} images are not supported")),
        Err(_) => Err(format!(
            "its first bytes {:02x?} are no image signature",
            &data[..data.len().min(8)]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (name, filename, data) in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            let disposition = match filename {
                Some(f) => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
            };
            out.extend_from_slice(disposition.as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        Bytes::from(out)
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n....";

    #[tokio::test]
    async fn files_are_images_and_fields_are_options() {
        let parsed = parse(
            body(&[
                ("Top-K", None, b" 3 "),
                ("image", Some("a.png"), PNG),
                ("b", Some("b.png"), PNG),
            ]),
            "XyZ".into(),
        )
        .await
        .expect("parses");
        let ParsedRequest {
            records,
            shape,
            parameters,
        } = parsed;
        assert!(matches!(shape, BodyShape::List) && records.count() == 2);
        let want = serde_json::json!({"top_k": "3"});
        assert_eq!(
            parameters,
            RawOptions::from_json(want.as_object().cloned().unwrap_or_default())
        );
    }

    #[tokio::test]
    async fn a_text_file_is_refused_naming_its_field() {
        let err = parse(body(&[("file", Some("notes.txt"), b"hello")]), "XyZ".into())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`file`") && err.contains("notes.txt"), "{err}");
        let err = parse(body(&[("top_k", None, b"3")]), "XyZ".into())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no file part"), "{err}");
        assert!(boundary(Some("multipart/form-data")).is_some_and(|b| b.is_err()));
        assert!(boundary(Some("image/png")).is_none());
    }
}
