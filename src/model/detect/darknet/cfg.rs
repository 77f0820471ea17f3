//! Darknet's `.cfg` files: `[section]` headers and `key=value` lines, read into the layer list
//! wick runs (convolution, max-pool, region), and the tensor names and shapes the layers read
//! from the `.weights` file.
// Format read from pjreddie/darknet src/parser.c and OpenCV's darknet importer (not copied).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::model::error::ModelError;
use crate::model::package::{Package, PackageError};

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
    pub(crate) anchors: Vec<(f32, f32)>,
    /// Classes.
    pub(crate) classes: usize,
}

/// A parsed `.cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cfg {
    /// Network input `(height, width)`.
    pub(crate) input_size: (usize, usize),
    /// Input channels.
    pub(crate) channels: usize,
    /// Layers after `[net]`.
    pub(crate) layers: Vec<Layer>,
}

/// A cfg (or network) wick cannot use, with the reason.
pub(super) fn bad(message: impl Into<String>) -> ModelError {
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
    pub(crate) fn parse(text: &str) -> Result<Self, ModelError> {
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

/// The darknet `.cfg` of a package, if its config names one (`darknet_cfg`).
pub(crate) fn package_cfg(package: &Package) -> Result<Option<PathBuf>, ModelError> {
    let Some(name) = package.config.darknet_cfg.as_deref() else {
        return Ok(None);
    };
    let path = package.config_dir.join(name);
    if !path.is_file() {
        return Err(ModelError::Package(PackageError::InvalidField {
            field: "darknet_cfg",
            message: format!("no such file in `{}`", package.config_dir.display()),
            value: name.to_string(),
        }));
    }
    Ok(Some(path))
}
