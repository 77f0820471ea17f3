//! The blocks ultralytics' YOLOv8 and YOLO11 share: the `Conv` block (Conv2d + BatchNorm + SiLU),
//! the bottleneck, C2f and SPPF. The `Detect` head and the network around a family's trunk are
//! in `ultralytics_detect.rs`.
// Based on ultralytics 8.4 nn/modules/{conv,block,head}.py and utils/tal.py (read, not copied).

use candle_core::Tensor;

use crate::model::error::ModelError;
use crate::model::kernels::{Activation, ConvGeometry};
use crate::model::layers::{max_pool, BatchNorm, Conv, ConvSpec};
use crate::model::weights::Weights;

/// ultralytics' `initialize_weights` sets every BatchNorm2d's eps to 1e-3.
const BN_EPS: f64 = 1e-3;
/// Output strides of the three detection levels (P3, P4, P5).
pub(crate) const STRIDES: [usize; 3] = [8, 16, 32];
/// The largest of [`STRIDES`]: input sides must be multiples of it.
pub(crate) const MAX_STRIDE: usize = 32;

/// Conv2d (no bias) + BatchNorm2d + optional SiLU, ultralytics' `Conv`.
pub(crate) fn conv(
    w: &Weights,
    prefix: &str,
    (c_in, c_out, k, s): (usize, usize, usize, usize),
    act: bool,
) -> Result<Conv, ModelError> {
    conv_spec(w, prefix, ConvSpec::new(c_in, c_out, k, s), act)
}

/// [`conv`] for any spec (e.g. depthwise, ultralytics' `DWConv`).
pub(crate) fn conv_spec(
    w: &Weights,
    prefix: &str,
    spec: ConvSpec,
    act: bool,
) -> Result<Conv, ModelError> {
    let bn = format!("{prefix}.bn");
    let activation = if act {
        Activation::Silu
    } else {
        Activation::Identity
    };
    Conv::load(
        w,
        &format!("{prefix}.conv"),
        Some(BatchNorm {
            prefix: &bn,
            eps: BN_EPS,
        }),
        spec.act(activation),
    )
}

/// Two 3x3 convolutions, added to the input when `shortcut` (ultralytics' `Bottleneck`).
pub(crate) struct Bottleneck {
    cv1: Conv,
    cv2: Conv,
    shortcut: bool,
}

impl Bottleneck {
    /// `prefix.cv1` (`c` -> `hidden`) and `prefix.cv2` (`hidden` -> `c`).
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        (c, hidden): (usize, usize),
        shortcut: bool,
    ) -> Result<Self, ModelError> {
        Ok(Bottleneck {
            cv1: conv(w, &format!("{prefix}.cv1"), (c, hidden, 3, 1), true)?,
            cv2: conv(w, &format!("{prefix}.cv2"), (hidden, c, 3, 1), true)?,
            shortcut,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let t = self.cv2.forward(&self.cv1.forward(xs)?)?;
        // The residual is added after cv2's SiLU, so it cannot be fused into the kernel (which
        // adds before the activation).
        if self.shortcut {
            t + xs
        } else {
            Ok(t)
        }
    }
}

impl Block for Bottleneck {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Bottleneck::forward(self, xs)
    }
}

/// One of the blocks a [`C2f`] chains (a bottleneck; YOLO11's C3k).
pub(crate) trait Block: Send + Sync {
    /// NHWC in, NHWC out, same shape.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
}

/// CSP bottleneck with two convolutions (`C2f`, and YOLO11's `C3k2` built on it): `cv1` splits
/// into halves, each block extends the list from the last element, `cv2` fuses the
/// concatenation.
pub(crate) struct C2f {
    cv1: Conv,
    cv2: Conv,
    hidden: usize,
    blocks: Vec<Box<dyn Block>>,
}

impl C2f {
    /// `prefix.cv1` (`c_in` -> 2 x `hidden`), `blocks` on `hidden` channels, `prefix.cv2`
    /// (`(2 + blocks) x hidden` -> `c_out`).
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        (c_in, hidden, c_out): (usize, usize, usize),
        blocks: Vec<Box<dyn Block>>,
    ) -> Result<Self, ModelError> {
        let parts = 2 + blocks.len();
        Ok(C2f {
            cv1: conv(w, &format!("{prefix}.cv1"), (c_in, 2 * hidden, 1, 1), true)?,
            cv2: conv(
                w,
                &format!("{prefix}.cv2"),
                (parts * hidden, c_out, 1, 1),
                true,
            )?,
            hidden,
            blocks,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv1.forward(xs)?;
        // `cv2` reads both halves of `y` and every block's output where they lie.
        let mut parts = vec![y.narrow(3, 0, self.hidden)?];
        let mut last = y.narrow(3, self.hidden, self.hidden)?.contiguous()?;
        parts.push(last.clone());
        for b in &self.blocks {
            last = b.forward(&last)?;
            parts.push(last.clone());
        }
        self.cv2.forward_concat(&parts.iter().collect::<Vec<_>>())
    }
}

/// Spatial pyramid pooling, fast: three chained 5x5 max pools concatenated.
pub(crate) struct Sppf {
    cv1: Conv,
    cv2: Conv,
}

impl Sppf {
    /// `prefix.cv1` halves the `c` channels, `prefix.cv2` fuses the four parts back to `c`.
    pub(crate) fn load(w: &Weights, prefix: &str, c: usize) -> Result<Self, ModelError> {
        // cv1 is activated: ultralytics 8.4's SPPF class defaults to an unactivated cv1
        // (YOLO26), but its model builder puts SiLU back for the v8 and 11 yaml rows, and every
        // checkpoint trained before that change has it.
        Ok(Sppf {
            cv1: conv(w, &format!("{prefix}.cv1"), (c, c / 2, 1, 1), true)?,
            cv2: conv(w, &format!("{prefix}.cv2"), (c / 2 * 4, c, 1, 1), true)?,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let pool = ConvGeometry::square(5, 1, 2);
        let mut parts = vec![self.cv1.forward(xs)?];
        for _ in 0..3 {
            let next = max_pool(parts.last().expect("one part"), pool)?;
            parts.push(next);
        }
        self.cv2.forward_concat(&parts.iter().collect::<Vec<_>>())
    }
}
