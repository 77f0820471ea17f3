//! A dense convolution of a channel-gated map, `conv(x * gate)` with one factor per image and
//! input channel (squeeze-excitation's gate before its block's projection). Where the map is
//! much larger than the packed weights (`k x c_out`), the gate scales a copy of the weights
//! per image and the gated map is never written: on EfficientNet's large early maps the
//! weights are a few thousand values against hundreds of thousands in the map. Elsewhere the
//! map is gated and convolved in one product, as before.

use super::conv::{run_packed, DenseParams};
use super::{dense_conv_new, Fresh, Nhwc};

/// Scaling the weights is chosen when the map is at least this many times larger than they
/// are: the scaled copy is written per image and the product then runs image by image.
/// Measured 2026-12-07 against the old gated copy, medians of three alternating runs: 1 gave
/// EfficientNet-B0 0.94x at batch 1 and 8 and EfficientNetV2-S 1.01-1.03x (within the noise);
/// 4 gave 0.97-1.0x and 0.99-1.0x.
const WEIGHTS_TO_MAP: usize = 1;

/// `input * gate` as a new map: each image's channels scaled by its `shape.c` factors.
pub(crate) fn gate_channels(input: &[f32], shape: Nhwc, gate: &[f32]) -> Vec<f32> {
    assert_eq!(
        gate.len(),
        shape.n * shape.c,
        "one factor per image and channel"
    );
    let mut gated = input[..shape.len()].to_vec();
    let plane = shape.h * shape.w * shape.c;
    for (image, factors) in gated
        .chunks_exact_mut(plane)
        .zip(gate.chunks_exact(shape.c))
    {
        for px in image.chunks_exact_mut(shape.c) {
            px.iter_mut().zip(factors).for_each(|(v, f)| *v *= f);
        }
    }
    gated
}

/// `activation(conv(input * gate) + bias (+ residual))` into a new contiguous buffer; `gate`
/// holds `shape.c` factors per image, `residual` (if any) the output's shape.
pub(crate) fn dense_conv_gated_new(
    input: &[f32],
    shape: Nhwc,
    params: &DenseParams<'_>,
    gate: &[f32],
    residual: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(
        gate.len(),
        shape.n * shape.c,
        "one factor per image and channel"
    );
    let Some(res) = params.geometry.resolve(shape.h, shape.w) else {
        return Vec::new();
    };
    let c_out = params.bias.len();
    let (plane_in, plane_out) = (shape.h * shape.w * shape.c, res.out_h * res.out_w * c_out);
    let Some(packed) = params
        .packed
        .filter(|_| WEIGHTS_TO_MAP * params.weight_len() <= plane_in)
    else {
        // The map is small against the weights (late blocks): gate it, one product for the
        // whole batch.
        return dense_conv_new(&gate_channels(input, shape, gate), shape, params, residual);
    };
    let image = Nhwc { n: 1, ..shape };
    let mut out = Fresh::new(shape.n * plane_out);
    for i in 0..shape.n {
        let x = &input[i * plane_in..][..plane_in];
        let scaled = packed.scale_rows(&gate[i * shape.c..][..shape.c]);
        let r = residual.map(|r| &r[i * plane_out..][..plane_out]);
        // SAFETY: image `i`'s rows of `out` are a disjoint range of the new buffer, which the
        // packed kernel writes in full (every tile of every panel).
        #[allow(unsafe_code)]
        unsafe {
            let dst = out.as_mut_ptr().add(i * plane_out);
            run_packed(x, image, res, params, &scaled, dst, c_out, r);
        }
    }
    // SAFETY: every image's rows were written above.
    #[allow(unsafe_code)]
    unsafe {
        out.assume_init()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{pseudo_random, Activation, ConvGeometry, PackedWeights};

    /// Gating the weights or the map must give what convolving the gated map gives, with and
    /// without a residual, for maps on either side of the weights' size.
    #[test]
    fn gated_convolution_equals_the_convolution_of_the_gated_map() {
        for (h, w, c_in, c_out) in [(16, 12, 8, 24), (2, 3, 40, 96)] {
            let n = 2;
            let shape = Nhwc { n, h, w, c: c_in };
            let input = pseudo_random(shape.len(), 1);
            let gate = pseudo_random(n * c_in, 2);
            let weight = pseudo_random(c_in * c_out, 3);
            let bias = pseudo_random(c_out, 4);
            let residual = pseudo_random(n * h * w * c_out, 5);
            let geometry = ConvGeometry::square(1, 1, 0);
            let packed = PackedWeights::pack(c_in, c_out, &weight);
            let params = DenseParams {
                geometry: &geometry,
                weight: &weight,
                bias: &bias,
                activation: Activation::Silu,
                packed: packed.as_ref(),
            };
            let gated_map: Vec<f32> = input
                .chunks_exact(h * w * c_in)
                .zip(gate.chunks_exact(c_in))
                .flat_map(|(img, g)| {
                    img.chunks_exact(c_in)
                        .flat_map(|px| px.iter().zip(g).map(|(v, f)| v * f).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                })
                .collect();
            for r in [None, Some(residual.as_slice())] {
                let want = crate::model::kernels::dense_conv_new(&gated_map, shape, &params, r);
                let got = dense_conv_gated_new(&input, shape, &params, &gate, r);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
                }
            }
        }
    }
}
