//! The answer of `/invocations`: each task's outputs in the negotiated format and the requested
//! shape. JSON follows the Hugging Face pipelines by default (`format=` picks IBM MAX's or
//! SageMaker's built-in shapes); image answers are a label map, an overlay or drawn boxes.

use std::sync::Arc;

use base64::Engine as _;
use image::RgbImage;
use serde::Serialize;
use serde_json::{json, Value};

use super::media::ResponseFormat;
use super::options::{ImageOutput, JsonShape, MaskFormat, RequestOptions};
use crate::model::{Detection, LabelMap, Output};
use crate::render::{self, RenderError};

/// Everything an answer is made from.
pub(crate) struct Answer<'a> {
    /// One output per image, in request order.
    pub(crate) outputs: &'a [Output],
    /// The decoded images (segmentation and detection), for overlays and image sizes.
    pub(crate) images: &'a [Arc<RgbImage>],
    /// Whether the client sent a list (and so expects a list back).
    pub(crate) is_list: bool,
    /// The negotiated format.
    pub(crate) format: ResponseFormat,
    /// The request's options.
    pub(crate) options: &'a RequestOptions,
    /// Class names by index.
    pub(crate) labels: &'a [String],
    /// A binary segmentation model (label maps as 0/255).
    pub(crate) is_binary: bool,
}

impl Answer<'_> {
    /// The response body.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, RenderError> {
        match self.format {
            ResponseFormat::Json => {
                let values = self.json_values()?;
                Ok(if self.is_list {
                    to_json(&values)
                } else {
                    values
                        .first()
                        .map(to_json)
                        .unwrap_or_else(|| b"[]".to_vec())
                })
            }
            ResponseFormat::JsonLines => {
                let mut out = Vec::new();
                for value in self.json_values()? {
                    out.extend(to_json(&value));
                    out.push(b'\n');
                }
                Ok(out)
            }
            ResponseFormat::Png | ResponseFormat::Jpeg => self.image(),
        }
    }

    fn json_values(&self) -> Result<Vec<Value>, RenderError> {
        self.outputs
            .iter()
            .enumerate()
            .map(|(i, output)| match output {
                Output::Classes(classes) => Ok(json!(classes)),
                Output::Segmentation(map) => self.segmentation_json(map),
                Output::Detections(boxes) => Ok(self.detection_json(boxes, self.images.get(i))),
            })
            .collect()
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

    fn detection_json(&self, boxes: &[Detection], image: Option<&Arc<RgbImage>>) -> Value {
        if self.options.shape == JsonShape::SageMaker {
            let (width, height) = image
                .map(|i| (i.width().max(1) as f32, i.height().max(1) as f32))
                .unwrap_or((1.0, 1.0));
            let rows: Vec<[f32; 6]> = boxes
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
                .collect();
            return json!({ "prediction": rows });
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

    fn image(&self) -> Result<Vec<u8>, RenderError> {
        let (Some(output), Some(image)) = (self.outputs.first(), self.images.first()) else {
            return Err(RenderError {
                format: "image",
                reason: "no image to draw on".into(),
            });
        };
        let encode = |picture: &RgbImage| match self.format {
            ResponseFormat::Jpeg => render::encode_jpeg(picture),
            _ => render::encode_png(picture),
        };
        match output {
            Output::Segmentation(map) => {
                // A JPEG label map would blur class indices: JPEG always means the overlay.
                if self.options.image_output == ImageOutput::Overlay
                    || self.format == ResponseFormat::Jpeg
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
        }
    }
}

fn label(labels: &[String], class: usize) -> String {
    labels
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class_{class}"))
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
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
        outputs: &'a [Output],
        images: &'a [Arc<RgbImage>],
        format: ResponseFormat,
        options: &'a RequestOptions,
        labels: &'a [String],
    ) -> Answer<'a> {
        Answer {
            outputs,
            images,
            is_list: false,
            format,
            options,
            labels,
            is_binary: false,
        }
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn classification_answers_are_a_list_per_image() {
        let p = |label: &str| Prediction {
            label: label.into(),
            score: 0.5,
        };
        let outputs = [
            Output::Classes(vec![p("cat")]),
            Output::Classes(vec![p("dog")]),
        ];
        let labels = labels();
        let opts = options(Task::Classification, "");
        let mut a = answer(&outputs[..1], &[], ResponseFormat::Json, &opts, &labels);
        assert_eq!(
            a.encode().ok(),
            Some(br#"[{"label":"cat","score":0.5}]"#.to_vec())
        );
        a.outputs = &outputs;
        a.is_list = true;
        assert_eq!(
            String::from_utf8(a.encode().unwrap_or_default()).unwrap_or_default(),
            r#"[[{"label":"cat","score":0.5}],[{"label":"dog","score":0.5}]]"#
        );
        a.format = ResponseFormat::JsonLines;
        assert_eq!(
            String::from_utf8(a.encode().unwrap_or_default()).unwrap_or_default(),
            "[{\"label\":\"cat\",\"score\":0.5}]\n[{\"label\":\"dog\",\"score\":0.5}]\n"
        );
    }

    #[test]
    fn segmentation_json_lists_present_classes_with_masks_counts_or_runs() {
        let map = LabelMap {
            width: 2,
            height: 2,
            classes: vec![0, 1, 1, 1],
        };
        let outputs = [Output::Segmentation(map)];
        let images = [Arc::new(RgbImage::new(2, 2))];
        let labels = labels();
        let opts = options(Task::Segmentation, "");
        let value = json_of(
            &answer(&outputs, &images, ResponseFormat::Json, &opts, &labels)
                .encode()
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
            &answer(&outputs, &images, ResponseFormat::Json, &rle, &labels)
                .encode()
                .expect("encodes"),
        );
        assert_eq!(value[1]["mask"], json!({"size": [2, 2], "counts": [1, 3]}));

        let seg_map = options(Task::Segmentation, "format=seg_map");
        let value = json_of(
            &answer(&outputs, &images, ResponseFormat::Json, &seg_map, &labels)
                .encode()
                .expect("encodes"),
        );
        assert_eq!(
            value,
            json!({"status": "ok", "image_size": [2, 2], "seg_map": [[0, 1], [1, 1]]})
        );
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
        let outputs = [Output::Detections(boxes)];
        let images = [Arc::new(RgbImage::new(100, 80))];
        let labels = labels();
        let hf = options(Task::Detection, "");
        let value = json_of(
            &answer(&outputs, &images, ResponseFormat::Json, &hf, &labels)
                .encode()
                .expect("encodes"),
        );
        assert_eq!(
            value,
            json!([{"score": 0.75, "label": "tree", "box": {"xmin": 10, "ymin": 20, "xmax": 50, "ymax": 40}}])
        );
        let sm = options(Task::Detection, "format=sagemaker");
        let value = json_of(
            &answer(&outputs, &images, ResponseFormat::Json, &sm, &labels)
                .encode()
                .expect("encodes"),
        );
        let row = &value["prediction"][0];
        let got: Vec<f64> = (0..6).map(|i| row[i].as_f64().unwrap_or(-1.0)).collect();
        let want = [2.0, 0.75, 0.104, 0.25, 0.5, 0.5];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }
}
