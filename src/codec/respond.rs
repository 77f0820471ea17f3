//! One record's answer: its output in the negotiated format and the requested shape (a
//! request's answers are put together in `assemble.rs`). JSON follows the Hugging Face
//! pipelines by default (`format=` picks IBM MAX's or SageMaker's built-in shapes); image
//! answers are a label map, an overlay or drawn boxes; `.npy` answers are arrays.

use base64::Engine as _;
use image::RgbImage;
use serde::Serialize;
use serde_json::{json, Value};

use super::media::ResponseFormat;
use super::npy;
use super::options::{ImageOutput, JsonShape, MaskFormat, RequestOptions};
use crate::model::{Detection, LabelMap, Output};
use crate::render::{self, RenderError};

/// Everything one record's answer is made from.
pub(crate) struct Answer<'a> {
    /// The model's output for the record.
    pub(crate) output: &'a Output,
    /// The decoded image, for pictures (segmentation and detection).
    pub(crate) image: Option<&'a RgbImage>,
    /// The decoded image's `(width, height)`, for box fractions (segmentation and detection).
    pub(crate) image_size: Option<(u32, u32)>,
    /// The record's options.
    pub(crate) options: &'a RequestOptions,
    /// Class names by index.
    pub(crate) labels: &'a [String],
    /// A binary segmentation model (label maps as 0/255 in pictures).
    pub(crate) is_binary: bool,
}

impl Answer<'_> {
    /// The record's answer on its own, as the whole body of a one-image request.
    pub(crate) fn encode(&self, format: ResponseFormat) -> Result<Vec<u8>, RenderError> {
        match format {
            ResponseFormat::Json | ResponseFormat::JsonLines => Ok(to_json(&self.json()?)),
            ResponseFormat::Png | ResponseFormat::Jpeg => self.picture(format),
            ResponseFormat::Npy => self.npy(),
        }
    }

    /// The record's JSON value.
    pub(crate) fn json(&self) -> Result<Value, RenderError> {
        match self.output {
            Output::Classes(classes) => Ok(json!(classes)),
            Output::Segmentation(map) => self.segmentation_json(map),
            Output::Detections(boxes) => Ok(self.detection_json(boxes)),
            Output::Streamed { .. } => Err(streamed("json")),
        }
    }

    /// Classification: every class's score in label order (classes the output does not rank
    /// score 0; serving asks for all of them).
    pub(crate) fn scores_in_label_order(&self) -> Vec<f32> {
        let mut row = vec![0.0; self.labels.len()];
        if let Output::Classes(classes) = self.output {
            for p in classes {
                if let Some(slot) = row.get_mut(p.class_id) {
                    *slot = p.score;
                }
            }
        }
        row
    }

    /// The `.npy` answer: scores `(1, classes)` float32, the label map `(h, w)` uint8 (class
    /// indices; 0/1 for a binary model), or boxes `(k, 6)` float32 rows `[class, score, xmin,
    /// ymin, xmax, ymax]` in pixels (fractions of the image with `format=sagemaker`).
    pub(crate) fn npy(&self) -> Result<Vec<u8>, RenderError> {
        Ok(match self.output {
            Output::Classes(_) => {
                npy::encode_f32(&[1, self.labels.len()], &self.scores_in_label_order())
            }
            Output::Segmentation(map) => {
                npy::encode_u8(&[map.height as usize, map.width as usize], &map.classes)
            }
            Output::Detections(boxes) => {
                let rows = self.detection_rows(boxes);
                npy::encode_f32(&[rows.len(), 6], &rows.concat())
            }
            Output::Streamed { .. } => return Err(streamed("npy")),
        })
    }

    fn segmentation_json(&self, map: &LabelMap) -> Result<Value, RenderError> {
        if self.options.shape == JsonShape::SegMap {
            let rows: Vec<&[u8]> = map.classes.chunks(map.width.max(1) as usize).collect();
            return Ok(json!({
                "status": "ok",
                "image_size": [map.width, map.height],
                "seg_map": rows,
            }));
        }
        let counts = map.pixel_counts(self.labels.len().max(256));
        let mut entries = Vec::new();
        for (class, &pixels) in counts.iter().enumerate() {
            if pixels == 0 {
                continue;
            }
            let class_u8 = class as u8;
            let mask = match self.options.mask_format {
                MaskFormat::Png => Value::String(
                    base64::engine::general_purpose::STANDARD
                        .encode(render::class_mask_png(map, class_u8)?),
                ),
                MaskFormat::Rle => json!(render::coco_rle(map, class_u8)),
            };
            entries.push(json!({
                "score": null,
                "label": label(self.labels, class),
                "mask": mask,
                "pixels": pixels,
            }));
        }
        Ok(Value::Array(entries))
    }

    /// `[class, score, xmin, ymin, xmax, ymax]` per box: pixels, or fractions of the image with
    /// `format=sagemaker` (SageMaker's built-in object detection).
    fn detection_rows(&self, boxes: &[Detection]) -> Vec<[f32; 6]> {
        let (width, height) = match (self.options.shape, self.image_size) {
            (JsonShape::SageMaker, Some((w, h))) => (w.max(1) as f32, h.max(1) as f32),
            _ => (1.0, 1.0),
        };
        boxes
            .iter()
            .map(|d| {
                [
                    d.class_id as f32,
                    d.score,
                    d.xmin / width,
                    d.ymin / height,
                    d.xmax / width,
                    d.ymax / height,
                ]
            })
            .collect()
    }

    fn detection_json(&self, boxes: &[Detection]) -> Value {
        if self.options.shape == JsonShape::SageMaker {
            return json!({ "prediction": self.detection_rows(boxes) });
        }
        #[derive(Serialize)]
        struct PixelBox {
            xmin: i64,
            ymin: i64,
            xmax: i64,
            ymax: i64,
        }
        // Hugging Face's object-detection pipeline gives whole pixels.
        Value::Array(
            boxes
                .iter()
                .map(|d| {
                    json!({
                        "score": d.score,
                        "label": d.label,
                        "box": PixelBox {
                            xmin: d.xmin.round() as i64,
                            ymin: d.ymin.round() as i64,
                            xmax: d.xmax.round() as i64,
                            ymax: d.ymax.round() as i64,
                        },
                    })
                })
                .collect(),
        )
    }

    fn picture(&self, format: ResponseFormat) -> Result<Vec<u8>, RenderError> {
        let Some(image) = self.image else {
            return Err(RenderError {
                format: "image",
                reason: "no image to draw on".into(),
            });
        };
        let encode = |picture: &RgbImage| match format {
            ResponseFormat::Jpeg => render::encode_jpeg(picture),
            _ => render::encode_png(picture),
        };
        match self.output {
            Output::Segmentation(map) => {
                // A JPEG label map would blur class indices: JPEG always means the overlay.
                if self.options.image_output == ImageOutput::Overlay
                    || format == ResponseFormat::Jpeg
                {
                    encode(&render::overlay_mask(image, map, self.is_binary)?)
                } else {
                    render::label_map_png(map, self.is_binary, self.options.voc_palette)
                }
            }
            Output::Detections(boxes) => encode(&render::draw_detections(image, boxes)),
            Output::Classes(_) => Err(RenderError {
                format: "image",
                reason: "a classification has no image answer".into(),
            }),
            Output::Streamed { .. } => Err(streamed("image")),
        }
    }
}

/// A streamed label map was written as it was computed; there is nothing left to encode.
fn streamed(format: &'static str) -> RenderError {
    RenderError {
        format,
        reason: "a streamed label map is answered as it is computed".into(),
    }
}

fn label(labels: &[String], class: usize) -> String {
    labels
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class_{class}"))
}

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising strings and numbers cannot fail (NaN becomes null).
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::options::RawOptions;
    use crate::model::package::Task;
    use crate::model::Prediction;

    fn options(task: Task, attributes: &str) -> RequestOptions {
        let raw = RawOptions::from_custom_attributes(Some(attributes)).expect("parses");
        RequestOptions::resolve(&raw, task, &labels(), 5).expect("valid")
    }

    fn labels() -> Vec<String> {
        ["background", "building", "tree"]
            .map(String::from)
            .to_vec()
    }

    fn answer<'a>(
        output: &'a Output,
        image: Option<&'a RgbImage>,
        options: &'a RequestOptions,
        labels: &'a [String],
    ) -> Answer<'a> {
        Answer {
            output,
            image,
            image_size: image.map(RgbImage::dimensions),
            options,
            labels,
            is_binary: false,
        }
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn classification_answers_rank_in_json_and_keep_label_order_in_npy() {
        let p = |class_id: usize, label: &str, score: f32| Prediction {
            class_id,
            label: label.into(),
            score,
        };
        let output = Output::Classes(vec![p(2, "tree", 0.75), p(0, "background", 0.25)]);
        let labels = labels();
        let opts = options(Task::Classification, "");
        let a = answer(&output, None, &opts, &labels);
        assert_eq!(
            String::from_utf8(a.encode(ResponseFormat::Json).unwrap_or_default())
                .unwrap_or_default(),
            r#"[{"label":"tree","score":0.75},{"label":"background","score":0.25}]"#
        );
        assert_eq!(a.scores_in_label_order(), [0.25, 0.0, 0.75]);
        let npy = a.encode(ResponseFormat::Npy).unwrap_or_default();
        let data: Vec<u8> = [0.25f32, 0.0, 0.75]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(npy.ends_with(&data), "scores in label order");
        assert!(String::from_utf8_lossy(&npy).contains("(1, 3)"));
    }

    #[test]
    fn segmentation_json_lists_present_classes_with_masks_counts_or_runs() {
        let map = LabelMap {
            width: 2,
            height: 2,
            classes: vec![0, 1, 1, 1],
        };
        let output = Output::Segmentation(map);
        let image = RgbImage::new(2, 2);
        let labels = labels();
        let opts = options(Task::Segmentation, "");
        let value = json_of(
            &answer(&output, Some(&image), &opts, &labels)
                .encode(ResponseFormat::Json)
                .expect("encodes"),
        );
        let entries = value.as_array().expect("a list");
        assert_eq!(entries.len(), 2, "tree is absent: {value}");
        assert_eq!(entries[1]["label"], "building");
        assert_eq!(entries[1]["pixels"], 3);
        assert!(entries[1]["score"].is_null());
        let png = base64::engine::general_purpose::STANDARD
            .decode(entries[1]["mask"].as_str().unwrap_or_default())
            .expect("base64");
        let mask = image::load_from_memory(&png).expect("a PNG").to_luma8();
        assert_eq!(mask.into_raw(), vec![0, 255, 255, 255]);

        let rle = options(Task::Segmentation, "mask_format=rle");
        let value = json_of(
            &answer(&output, Some(&image), &rle, &labels)
                .encode(ResponseFormat::Json)
                .expect("encodes"),
        );
        assert_eq!(value[1]["mask"], json!({"size": [2, 2], "counts": [1, 3]}));

        let seg_map = options(Task::Segmentation, "format=seg_map");
        let value = json_of(
            &answer(&output, Some(&image), &seg_map, &labels)
                .encode(ResponseFormat::Json)
                .expect("encodes"),
        );
        assert_eq!(
            value,
            json!({"status": "ok", "image_size": [2, 2], "seg_map": [[0, 1], [1, 1]]})
        );
        let npy = answer(&output, Some(&image), &opts, &labels)
            .encode(ResponseFormat::Npy)
            .expect("encodes");
        assert!(npy.ends_with(&[0, 1, 1, 1]) && String::from_utf8_lossy(&npy).contains("(2, 2)"));
    }

    #[test]
    fn detection_json_in_pixels_or_sagemakers_fractions() {
        let boxes = vec![Detection {
            class_id: 2,
            label: "tree".into(),
            score: 0.75,
            xmin: 10.4,
            ymin: 20.0,
            xmax: 50.0,
            ymax: 40.0,
        }];
        let output = Output::Detections(boxes);
        let image = RgbImage::new(100, 80);
        let labels = labels();
        let hf = options(Task::Detection, "");
        let value = json_of(
            &answer(&output, Some(&image), &hf, &labels)
                .encode(ResponseFormat::Json)
                .expect("encodes"),
        );
        assert_eq!(
            value,
            json!([{"score": 0.75, "label": "tree", "box": {"xmin": 10, "ymin": 20, "xmax": 50, "ymax": 40}}])
        );
        let sm = options(Task::Detection, "format=sagemaker");
        let value = json_of(
            &answer(&output, Some(&image), &sm, &labels)
                .encode(ResponseFormat::Json)
                .expect("encodes"),
        );
        let row = &value["prediction"][0];
        let got: Vec<f64> = (0..6).map(|i| row[i].as_f64().unwrap_or(-1.0)).collect();
        let want = [2.0, 0.75, 0.104, 0.25, 0.5, 0.5];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // .npy rows are in pixels unless format=sagemaker asks for fractions.
        let npy = answer(&output, Some(&image), &hf, &labels)
            .encode(ResponseFormat::Npy)
            .expect("encodes");
        let row: Vec<u8> = [2.0f32, 0.75, 10.4, 20.0, 50.0, 40.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(npy.ends_with(&row) && String::from_utf8_lossy(&npy).contains("(1, 6)"));
    }
}
