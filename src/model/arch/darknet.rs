//! Darknet detectors described by a `.cfg` file and a `.weights` file (Tiny YOLOv2 and other
//! plain convolution / max-pool / region stacks): the cfg parser, the weights reader, the
//! network, and the region layer's decoding.
//!
//! `.weights`: three i32 (major, minor, revision), then `seen` as u64 when
//! `major * 10 + minor >= 2` (u32 before), then for every convolutional layer in order: its
//! biases (the batch norm's beta when `batch_normalize=1`), then for batch-normalized layers the
//! scales (gamma), rolling means and rolling variances, then the weights `(filters, c_in, k, k)`,
//! all little-endian f32. Nothing else: the file must end exactly there.
// Format read from pjreddie/darknet src/parser.c and OpenCV's darknet importer (not copied).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::model::kernels::{Activation, ConvGeometry, Padding};
use crate::model::layers::{max_pool, BatchNorm, Conv, ConvSpec};
use crate::model::nms::Candidate;
use crate::model::weights::Weights;
use crate::model::ModelError;

/// Architecture names built from a darknet `.cfg`.
pub const NAMES: &[&str] = &["tiny_yolov2"];
/// Darknet's letterbox fills with 0.5.
pub const PAD_VALUE: f32 = 0.5;
/// Darknet adds 1e-6 to the standard deviation; folded here as `sqrt(var + 1e-6)`, a relative
/// difference below 1e-6 for any real variance.
const BN_EPS: f64 = 1e-6;
/// Largest cfg accepted, and most layers: far above any real detector.
const MAX_CFG_BYTES: u64 = 1 << 20;
const MAX_LAYERS: usize = 1000;

/// One `[section]` of the cfg this module runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// `[convolutional]`.
    Conv {
        /// Output channels.
        filters: usize,
        /// Square kernel size.
        size: usize,
        /// Stride.
        stride: usize,
        /// Padding on each side (`size / 2` when `pad=1`).
        padding: usize,
        /// Whether a batch norm follows (and the conv has no bias of its own).
        batch_normalize: bool,
        /// `leaky` (slope 0.1) or `linear`.
        leaky: bool,
    },
    /// `[maxpool]`: darknet pads `size - 1` in total, the extra pixel at the bottom/right.
    MaxPool {
        /// Window.
        size: usize,
        /// Stride.
        stride: usize,
    },
    /// `[region]`: YOLOv2's output layer.
    Region(Region),
}

/// YOLOv2's region layer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// `(w, h)` per anchor, in grid cells.
    pub anchors: Vec<(f32, f32)>,
    /// Classes.
    pub classes: usize,
}

/// A parsed `.cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cfg {
    /// Network input `(height, width)`.
    pub input_size: (usize, usize),
    /// Input channels.
    pub channels: usize,
    /// Layers after `[net]`.
    pub layers: Vec<Layer>,
}

fn bad(message: impl Into<String>) -> ModelError {
    ModelError::Unsupported(format!("darknet cfg: {}", message.into()))
}

impl Cfg {
    /// Reads and parses a `.cfg` file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let io = |e: std::io::Error| bad(format!("cannot read `{}`: {e}", path.display()));
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CFG_BYTES {
            return Err(bad(format!(
                "`{}` is {len} bytes, more than {MAX_CFG_BYTES}",
                path.display()
            )));
        }
        Self::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// Parses cfg text: `[section]` headers and `key=value` lines, `#` / `;` comments.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let mut sections: Vec<(String, HashMap<String, String>)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                if sections.len() > MAX_LAYERS {
                    return Err(bad(format!("more than {MAX_LAYERS} sections")));
                }
                sections.push((name.to_string(), HashMap::new()));
            } else if let (Some((k, v)), Some(last)) = (line.split_once('='), sections.last_mut()) {
                last.1.insert(k.to_string(), v.to_string());
            } else {
                return Err(bad(format!(
                    "line {}: expected `[section]` or `key=value`, got {raw:?}",
                    n + 1
                )));
            }
        }
        let mut it = sections.into_iter();
        let Some((first, net)) = it
            .next()
            .filter(|(name, _)| name == "net" || name == "network")
        else {
            return Err(bad("the first section must be [net]"));
        };
        debug_assert!(first == "net" || first == "network");
        let int = |s: &HashMap<String, String>,
                   section: &str,
                   key: &str,
                   default: Option<usize>|
         -> Result<usize, ModelError> {
            match s.get(key) {
                Some(v) => v.parse().map_err(|_| {
                    bad(format!(
                        "[{section}] {key}={v} is not a non-negative integer"
                    ))
                }),
                None => default.ok_or_else(|| bad(format!("[{section}] needs `{key}`"))),
            }
        };
        let input_size = (
            int(&net, "net", "height", None)?,
            int(&net, "net", "width", None)?,
        );
        let channels = int(&net, "net", "channels", Some(3))?;
        let mut layers = Vec::new();
        for (name, s) in it {
            let layer = match name.as_str() {
                "convolutional" | "conv" => {
                    let size = int(&s, &name, "size", Some(1))?;
                    let pad = int(&s, &name, "pad", Some(0))?;
                    let padding = if pad == 1 {
                        size / 2
                    } else {
                        int(&s, &name, "padding", Some(0))?
                    };
                    let leaky = match s
                        .get("activation")
                        .map(String::as_str)
                        .unwrap_or("logistic")
                    {
                        "leaky" => true,
                        "linear" => false,
                        other => {
                            return Err(bad(format!(
                                "[{name}] activation={other} is not supported (leaky, linear)"
                            )))
                        }
                    };
                    let filters = int(&s, &name, "filters", Some(1))?;
                    let stride = int(&s, &name, "stride", Some(1))?;
                    if size == 0 || stride == 0 || filters == 0 || size % 2 == 0 {
                        return Err(bad(format!(
                            "[{name}] needs an odd size and positive filters and stride"
                        )));
                    }
                    Layer::Conv {
                        filters,
                        size,
                        stride,
                        padding,
                        batch_normalize: int(&s, &name, "batch_normalize", Some(0))? == 1,
                        leaky,
                    }
                }
                "maxpool" | "max" => {
                    let size = int(&s, &name, "size", Some(2))?;
                    let stride = int(&s, &name, "stride", Some(size))?;
                    if size == 0 || stride == 0 || s.contains_key("padding") {
                        return Err(bad(format!(
                            "[{name}] needs positive size and stride, and no explicit padding"
                        )));
                    }
                    Layer::MaxPool { size, stride }
                }
                "region" => {
                    let values: Vec<f32> = s
                        .get("anchors")
                        .map(|a| {
                            a.split(',')
                                .filter(|v| !v.is_empty())
                                .map(str::parse::<f32>)
                                .collect::<Result<Vec<f32>, _>>()
                        })
                        .transpose()
                        .map_err(|_| bad("[region] anchors must be numbers"))?
                        .unwrap_or_default();
                    let num = int(&s, &name, "num", Some(1))?;
                    if values.len() != 2 * num {
                        return Err(bad(format!(
                            "[region] num={num} needs {} anchor values, got {}",
                            2 * num,
                            values.len()
                        )));
                    }
                    if int(&s, &name, "coords", Some(4))? != 4 {
                        return Err(bad("[region] coords must be 4"));
                    }
                    Layer::Region(Region {
                        anchors: values.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
                        classes: int(&s, &name, "classes", Some(20))?,
                    })
                }
                other => {
                    return Err(bad(format!(
                        "layer type [{other}] is not supported (convolutional, maxpool, region)"
                    )))
                }
            };
            layers.push(layer);
        }
        match layers.last() {
            Some(Layer::Region(_))
                if layers
                    .iter()
                    .filter(|l| matches!(l, Layer::Region(_)))
                    .count()
                    == 1 => {}
            _ => return Err(bad("the last layer must be the only [region]")),
        }
        Ok(Cfg {
            input_size,
            channels,
            layers,
        })
    }

    /// `(name, shape)` of every tensor in `.weights` order, under wick's names
    /// (`layers.{i}.bn.*`, `layers.{i}.conv.*`).
    pub fn tensor_layout(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut c_in = self.channels;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Layer::Conv {
                filters,
                size,
                batch_normalize,
                ..
            } = *layer
            {
                if batch_normalize {
                    for leaf in ["bias", "weight", "running_mean", "running_var"] {
                        out.push((format!("layers.{i}.bn.{leaf}"), vec![filters]));
                    }
                } else {
                    out.push((format!("layers.{i}.conv.bias"), vec![filters]));
                }
                out.push((
                    format!("layers.{i}.conv.weight"),
                    vec![filters, c_in, size, size],
                ));
                c_in = filters;
            }
        }
        out
    }
}

/// Reads a `.weights` file for the network `cfg_path` describes, as named tensors.
pub fn load_weights(cfg_path: &Path, weights_path: &Path) -> Result<Weights, ModelError> {
    let cfg = Cfg::read(cfg_path)?;
    let bytes = std::fs::read(weights_path)
        .map_err(|e| bad(format!("cannot read `{}`: {e}", weights_path.display())))?;
    weights_from_bytes(&cfg, &bytes)
}

/// Parses `.weights` bytes for `cfg`; every size is checked, so a short or long file is an
/// error naming what is missing, never a panic.
pub fn weights_from_bytes(cfg: &Cfg, bytes: &[u8]) -> Result<Weights, ModelError> {
    let werr = |m: String| ModelError::Unsupported(format!("darknet weights: {m}"));
    let header = |i: usize| -> Result<i32, ModelError> {
        let b = bytes.get(i * 4..i * 4 + 4).ok_or_else(|| {
            werr(format!(
                "file of {} bytes ends inside the header",
                bytes.len()
            ))
        })?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (major, minor) = (header(0)?, header(1)?);
    let seen_bytes = if major * 10 + minor >= 2 && major < 1000 && minor < 1000 {
        8
    } else {
        4
    };
    let mut pos = 12 + seen_bytes;
    if bytes.len() < pos {
        return Err(werr(format!(
            "file of {} bytes ends inside the header",
            bytes.len()
        )));
    }
    let mut tensors = HashMap::new();
    for (name, shape) in cfg.tensor_layout() {
        let n: usize = shape.iter().product();
        let end = pos + n * 4;
        let Some(chunk) = bytes.get(pos..end) else {
            return Err(werr(format!(
                "truncated: `{name}` needs {n} floats at byte {pos}, the file has {} bytes",
                bytes.len()
            )));
        };
        let values: Vec<f32> = chunk
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        pos = end;
    }
    if pos != bytes.len() {
        return Err(werr(format!(
            "{} bytes left over after the last layer: the file does not match the cfg",
            bytes.len() - pos
        )));
    }
    Ok(Weights::from_tensors(tensors))
}

enum Step {
    Conv(Conv),
    MaxPool(ConvGeometry),
}

/// A loaded darknet detector.
pub struct Darknet {
    steps: Vec<Step>,
    region: Region,
    input_size: (usize, usize),
}

impl Darknet {
    /// Builds the network of `cfg` from `w` (names from [`Cfg::tensor_layout`]).
    pub fn load(cfg: &Cfg, w: &Weights) -> Result<Self, ModelError> {
        let mut steps = Vec::new();
        let mut c_in = cfg.channels;
        let mut region = None;
        for (i, layer) in cfg.layers.iter().enumerate() {
            match *layer {
                Layer::Conv {
                    filters,
                    size,
                    stride,
                    padding,
                    batch_normalize,
                    leaky,
                } => {
                    let bn = format!("layers.{i}.bn");
                    let mut spec = ConvSpec::new(c_in, filters, size, stride)
                        .pad(Padding::symmetric(padding))
                        .act(if leaky {
                            Activation::LeakyRelu(0.1)
                        } else {
                            Activation::Identity
                        });
                    spec.has_bias = !batch_normalize;
                    let norm = batch_normalize.then_some(BatchNorm {
                        prefix: &bn,
                        eps: BN_EPS,
                    });
                    steps.push(Step::Conv(Conv::load(
                        w,
                        &format!("layers.{i}.conv"),
                        norm,
                        spec,
                    )?));
                    c_in = filters;
                }
                Layer::MaxPool { size, stride } => {
                    let total = size - 1;
                    let mut g = ConvGeometry::square(size, stride, 0);
                    g.padding = Padding::Explicit {
                        top: total / 2,
                        left: total / 2,
                        bottom: total - total / 2,
                        right: total - total / 2,
                    };
                    steps.push(Step::MaxPool(g));
                }
                Layer::Region(ref r) => region = Some(r.clone()),
            }
        }
        let region = region.ok_or_else(|| bad("no [region] layer"))?;
        let expected = region.anchors.len() * (5 + region.classes);
        if c_in != expected {
            return Err(bad(format!(
                "the last convolution has {c_in} filters; the region layer needs anchors x (5 + classes) = {expected}"
            )));
        }
        Ok(Darknet {
            steps,
            region,
            input_size: cfg.input_size,
        })
    }

    /// Classes.
    pub fn num_classes(&self) -> usize {
        self.region.classes
    }

    /// Input `(height, width)` from `[net]`.
    pub fn input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// `(n, h, w, c)` NHWC in [0, 1] -> the last convolution's output `(n, gh, gw, anchors *
    /// (5 + nc))`, NHWC, before the region layer.
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = xs.clone();
        for step in &self.steps {
            x = match step {
                Step::Conv(c) => c.forward(&x)?,
                Step::MaxPool(g) => max_pool(&x, *g)?,
            };
        }
        Ok(x)
    }

    /// `(n, h, w, c)` NHWC in [0, 1] -> the region output `(n, anchors * (5 + nc), gh, gw)`:
    /// sigmoid x, y and objectness, raw w and h, softmax over the classes of each anchor.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.features(xs)?;
        let (n, gh, gw, c) = x.dims4()?;
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        let per_anchor = 5 + self.region.classes;
        let plane = gh * gw;
        let mut out = vec![0.0f32; data.len()];
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        for b in 0..n {
            for loc in 0..plane {
                let pixel = &data[(b * plane + loc) * c..][..c];
                for (a, entries) in pixel.chunks_exact(per_anchor).enumerate() {
                    let at = |e: usize| ((b * c) + a * per_anchor + e) * plane + loc;
                    out[at(0)] = sigmoid(entries[0]);
                    out[at(1)] = sigmoid(entries[1]);
                    out[at(2)] = entries[2];
                    out[at(3)] = entries[3];
                    out[at(4)] = sigmoid(entries[4]);
                    let classes = &entries[5..];
                    let max = classes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = classes.iter().map(|v| (v - max).exp()).sum();
                    for (k, v) in classes.iter().enumerate() {
                        out[at(5 + k)] = (v - max).exp() / sum;
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, c, gh, gw), &Device::Cpu)
    }

    /// Boxes of a region output (first image) whose best `objectness * class probability`
    /// beats `threshold`, in input pixels of an `input` `(height, width)` canvas.
    pub fn candidates(
        &self,
        raw: &Tensor,
        threshold: f32,
        input: (usize, usize),
    ) -> Result<Vec<Candidate>, ModelError> {
        let (_, c, gh, gw) = raw.dims4()?;
        let data = raw.get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let per_anchor = 5 + self.region.classes;
        let plane = gh * gw;
        let (in_h, in_w) = (input.0 as f32, input.1 as f32);
        let mut out = Vec::new();
        for (a, &(anchor_w, anchor_h)) in
            self.region.anchors.iter().enumerate().take(c / per_anchor)
        {
            let at = |e: usize, loc: usize| data[(a * per_anchor + e) * plane + loc];
            for loc in 0..plane {
                let obj = at(4, loc);
                let (class_id, prob) = (0..self.region.classes)
                    .map(|k| at(5 + k, loc))
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (k, p)| {
                        if p > best.1 {
                            (k, p)
                        } else {
                            best
                        }
                    });
                let score = obj * prob;
                if score <= threshold {
                    continue;
                }
                let (y, x) = ((loc / gw) as f32, (loc % gw) as f32);
                let cx = (x + at(0, loc)) / gw as f32 * in_w;
                let cy = (y + at(1, loc)) / gh as f32 * in_h;
                let w = at(2, loc).exp() * anchor_w / gw as f32 * in_w;
                let h = at(3, loc).exp() * anchor_h / gh as f32 * in_h;
                out.push(Candidate {
                    xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                    score,
                    class_id,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str =
        "[net]\nwidth=64\nheight=32\nchannels=3\n\n[convolutional]\nbatch_normalize=1\n\
        filters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]\nsize=2\nstride=2\n\n\
        [convolutional]\nfilters=12\nsize=1\nstride=1\npad=1\nactivation=linear\n\n[region]\n\
        anchors = 1,2, 3,4\nclasses=1\ncoords=4\nnum=2\n";

    #[test]
    fn a_cfg_parses_into_layers_and_tensor_layout() {
        let cfg = Cfg::parse(CFG).expect("parses");
        assert_eq!(cfg.input_size, (32, 64));
        assert_eq!(cfg.layers.len(), 4);
        let layout = cfg.tensor_layout();
        let names: Vec<&str> = layout.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "layers.0.bn.bias",
                "layers.0.bn.weight",
                "layers.0.bn.running_mean",
                "layers.0.bn.running_var",
                "layers.0.conv.weight",
                "layers.2.conv.bias",
                "layers.2.conv.weight"
            ]
        );
        assert_eq!(layout[6].1, vec![12, 4, 1, 1]);
    }

    #[test]
    fn weights_of_the_wrong_length_are_errors() {
        let cfg = Cfg::parse(CFG).expect("parses");
        let floats: usize = cfg
            .tensor_layout()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let mut bytes = Vec::new();
        for v in [0i32, 2, 0] {
            bytes.extend(v.to_le_bytes());
        }
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0u8, floats * 4));
        let w = weights_from_bytes(&cfg, &bytes).expect("exact size loads");
        assert!(Darknet::load(&cfg, &w).is_ok());
        let short = weights_from_bytes(&cfg, &bytes[..bytes.len() - 1]).expect_err("short");
        assert!(short.to_string().contains("truncated"), "{short}");
        bytes.push(0);
        let long = weights_from_bytes(&cfg, &bytes).expect_err("long");
        assert!(long.to_string().contains("left over"), "{long}");
        assert!(weights_from_bytes(&cfg, &bytes[..10]).is_err());
    }

    #[test]
    fn unsupported_cfgs_are_refused_with_the_reason() {
        let e = Cfg::parse("[net]\nwidth=8\nheight=8\n[yolo]\n").expect_err("refused");
        assert!(e.to_string().contains("[yolo]"), "{e}");
        assert!(Cfg::parse("[convolutional]\n").is_err());
    }
}
