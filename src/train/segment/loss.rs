//! The objective and the metrics of segmentation training. Loss: softmax cross-entropy per
//! pixel, or binary cross-entropy with logits for a one-output model, averaged over the pixels
//! that are not ignored. Metrics from a confusion matrix over the same pixels: pixel accuracy,
//! per-class IoU and their mean over the classes present in the truth or the prediction (a
//! class absent from both has no IoU and does not count).

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use super::dataset::IGNORED;

/// Per-pixel targets of a batch as the loss needs them.
pub(crate) struct Targets {
    /// Softmax: one-hot `(pixels, k)` (an ignored pixel's row is zero); binary: `(pixels)` 0/1.
    pub(crate) dense: Tensor,
    /// `(pixels)`: 1 where the pixel counts, 0 where it is ignored (binary only).
    pub(crate) mask: Tensor,
    /// Pixels that count.
    pub(crate) valid: usize,
}

/// Targets for `classes` (the class indices, [`IGNORED`] for ignored pixels), `k` outputs.
pub(crate) fn targets(classes: &[u8], k: usize, dtype: DType) -> candle_core::Result<Targets> {
    let n = classes.len();
    let valid = classes.iter().filter(|&&c| c != IGNORED).count();
    let mask: Vec<f32> = classes
        .iter()
        .map(|&c| f32::from(u8::from(c != IGNORED)))
        .collect();
    let dense = if k == 1 {
        let t: Vec<f32> = classes
            .iter()
            .map(|&c| f32::from(u8::from(c == 1)))
            .collect();
        Tensor::from_vec(t, n, &Device::Cpu)?
    } else {
        let mut q = vec![0f32; n * k];
        for (row, &c) in classes.iter().enumerate() {
            if c != IGNORED {
                q[row * k + usize::from(c)] = 1.0;
            }
        }
        Tensor::from_vec(q, (n, k), &Device::Cpu)?
    };
    Ok(Targets {
        dense: dense.to_dtype(dtype)?,
        mask: Tensor::from_vec(mask, n, &Device::Cpu)?.to_dtype(dtype)?,
        valid,
    })
}

/// Mean loss over the valid pixels of `(b, k, h, w)` logits (0 when none is valid).
pub(crate) fn loss(logits: &Tensor, t: &Targets) -> candle_core::Result<Tensor> {
    let (b, k, h, w) = logits.dims4()?;
    let denom = t.valid.max(1) as f64;
    if k == 1 {
        // max(x, 0) - x t + log(1 + exp(-|x|)): finite for any logit
        // (`../shared/docs/candle-cpu.md`, training).
        let x = logits.flatten_all()?;
        let per_pixel =
            ((x.relu()? - (&x * &t.dense)?)? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
        return (per_pixel * &t.mask)?.sum_all()? / denom;
    }
    let flat = logits.permute((0, 2, 3, 1))?.reshape((b * h * w, k))?;
    let log_p = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    (log_p * &t.dense)?.sum_all()?.neg()? / denom
}

/// Counts `matrix[truth][predicted]` over the pixels whose truth is not ignored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Confusion {
    classes: usize,
    matrix: Vec<u64>,
}

/// The metrics of one confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Scores {
    /// Correct pixels / valid pixels.
    pub(crate) pixel_accuracy: f64,
    /// Mean of the defined per-class IoUs.
    pub(crate) mean_iou: f64,
    /// IoU of each class; `None` when the class is absent from truth and prediction.
    pub(crate) iou: Vec<Option<f64>>,
}

impl Confusion {
    /// An empty matrix for `classes` classes (2 for a binary model).
    pub(crate) fn new(classes: usize) -> Self {
        Confusion {
            classes,
            matrix: vec![0; classes * classes],
        }
    }

    /// Adds pixels: `truth` may hold [`IGNORED`]; `predicted` are class indices.
    pub(crate) fn add(&mut self, truth: &[u8], predicted: &[u8]) {
        for (&t, &p) in truth.iter().zip(predicted) {
            let (t, p) = (usize::from(t), usize::from(p));
            if t < self.classes && p < self.classes {
                self.matrix[t * self.classes + p] += 1;
            }
        }
    }

    /// Pixel accuracy, per-class IoU and mean IoU.
    pub(crate) fn scores(&self) -> Scores {
        let k = self.classes;
        let at = |t: usize, p: usize| self.matrix[t * k + p] as f64;
        let total: f64 = self.matrix.iter().map(|&v| v as f64).sum();
        let correct: f64 = (0..k).map(|c| at(c, c)).sum();
        let iou: Vec<Option<f64>> = (0..k)
            .map(|c| {
                let truth: f64 = (0..k).map(|p| at(c, p)).sum();
                let predicted: f64 = (0..k).map(|t| at(t, c)).sum();
                let union = truth + predicted - at(c, c);
                (union > 0.0).then(|| at(c, c) / union)
            })
            .collect();
        let defined: Vec<f64> = iou.iter().flatten().copied().collect();
        Scores {
            pixel_accuracy: if total > 0.0 { correct / total } else { 0.0 },
            mean_iou: if defined.is_empty() {
                0.0
            } else {
                defined.iter().sum::<f64>() / defined.len() as f64
            },
            iou,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(t: candle_core::Result<Tensor>) -> f64 {
        t.and_then(|t| t.to_scalar::<f64>()).unwrap_or(f64::NAN)
    }

    /// 2 pixels x 3 classes; the second pixel is ignored and must not count.
    #[test]
    fn cross_entropy_by_hand_skips_the_ignored_pixel() -> candle_core::Result<()> {
        // (b=1, k=3, h=1, w=2): pixel 0 logits (0, ln 2, 0), pixel 1 logits (100, 0, 0).
        let logits = Tensor::new(&[0.0f64, 100.0, 2f64.ln(), 0.0, 0.0, 0.0], &Device::Cpu)?
            .reshape((1, 3, 1, 2))?;
        let t = targets(&[1, IGNORED], 3, DType::F64)?;
        assert_eq!(t.valid, 1);
        // p(class 1) at pixel 0 = 2 / (1 + 2 + 1): loss ln 2.
        let got = value(loss(&logits, &t));
        assert!((got - 2f64.ln()).abs() < 1e-12, "{got}");
        // Nothing valid: zero, not NaN.
        let none = targets(&[IGNORED, IGNORED], 3, DType::F64)?;
        assert_eq!(value(loss(&logits, &none)), 0.0);
        Ok(())
    }

    #[test]
    fn binary_cross_entropy_by_hand_and_finite_for_huge_logits() -> candle_core::Result<()> {
        // Pixels: logit 0 truth 1 (ln 2), logit 2 truth 0 (ln(1 + e^2)), logit -1000 truth 1
        // (1000), ignored pixel with logit 5.
        let logits =
            Tensor::new(&[0.0f64, 2.0, -1000.0, 5.0], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let t = targets(&[1, 0, 1, IGNORED], 1, DType::F64)?;
        let want = (2f64.ln() + (1.0 + 2f64.exp()).ln() + 1000.0) / 3.0;
        let got = value(loss(&logits, &t));
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn mean_iou_skips_classes_absent_from_truth_and_prediction() {
        let mut c = Confusion::new(4);
        // truth:     0 0 1 1 255
        // predicted: 0 1 1 1 3
        c.add(&[0, 0, 1, 1, IGNORED], &[0, 1, 1, 1, 3]);
        let s = c.scores();
        // class 0: 1 / (2 + 1 - 1) = 0.5; class 1: 2 / (2 + 3 - 2) = 2/3; classes 2, 3: none
        // (the ignored pixel's prediction 3 does not count).
        assert_eq!(s.iou, vec![Some(0.5), Some(2.0 / 3.0), None, None]);
        assert!((s.mean_iou - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((s.pixel_accuracy - 0.75).abs() < 1e-12);
        // A class predicted but absent from the truth counts with IoU 0.
        let mut d = Confusion::new(3);
        d.add(&[0, 0], &[0, 2]);
        let s = d.scores();
        assert_eq!(s.iou, vec![Some(0.5), None, Some(0.0)]);
        assert!((s.mean_iou - 0.25).abs() < 1e-12);
    }
}
