//! A 1x1 convolution over the channel concatenation of several maps, reading each map where
//! it lies (YOLO's C2f and SPPF concatenate every intermediate map only to feed one 1x1
//! convolution: the concatenated copy was a write and a read of the block's widest map).

use super::dense::{self, Part, Rows, Target};
use super::{dense_conv_new, DenseParams, Fresh, Nhwc};

/// `activation(conv(concat(parts)) + bias)` into a new contiguous buffer, for a 1x1
/// convolution with `parts.len() * shape.c` input channels; each part holds `shape.c`
/// channels of `shape`'s pixels.
pub(crate) fn dense_conv_concat_new(
    parts: &[Part<'_>],
    shape: Nhwc,
    params: &DenseParams<'_>,
) -> Vec<f32> {
    let pixels = shape.n * shape.h * shape.w;
    let c_out = params.bias.len();
    assert_eq!(params.geometry.kernel, (1, 1), "a pointwise convolution");
    let Some(packed) = params.packed else {
        let mut joined = Vec::with_capacity(pixels * shape.c * parts.len());
        for m in 0..pixels {
            for part in parts {
                joined.extend_from_slice(&part.data[m * part.stride..][..shape.c]);
            }
        }
        let joined_shape = Nhwc {
            c: shape.c * parts.len(),
            ..shape
        };
        return dense_conv_new(&joined, joined_shape, params, None);
    };
    let rows = Rows::gather(parts.to_vec(), shape);
    let mut out = Fresh::new(pixels * c_out);
    let target = Target {
        data: out.as_mut_ptr(),
        row_stride: c_out,
        bias: params.bias,
        residual: None,
        activation: params.activation,
    };
    // SAFETY: `out` is a new buffer of every output row, owned here, which `dense::run`
    // writes in full; `Rows::gather` checked that every part holds every pixel.
    #[allow(unsafe_code)]
    unsafe {
        dense::run(&rows, packed, &target);
        out.assume_init()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{pseudo_random, Activation, ConvGeometry, PackedWeights};

    /// Parts read in place, one of them a channel slice of a wider map, give what the
    /// convolution of the concatenated copy gives, in f32 and in bf16.
    #[test]
    fn concatenated_parts_convolve_like_their_copy() {
        let f32_out = concat_against_copy(false);
        if crate::model::kernels::bf16_supported() {
            let bf16_out = concat_against_copy(true);
            assert!(
                f32_out
                    .iter()
                    .zip(&bf16_out)
                    .any(|(a, b)| (a - b).abs() > 1e-4),
                "the bf16 run rounded its operands"
            );
        }
    }

    /// The parts' output, after checking it against the copy's.
    fn concat_against_copy(bf16: bool) -> Vec<f32> {
        let (n, h, w, c, c_out) = (2, 5, 7, 12, 40);
        let pixels = n * h * w;
        let wide = pseudo_random(pixels * 2 * c, 1);
        let narrow = pseudo_random(pixels * c, 2);
        let weight = pseudo_random(3 * c * c_out, 3);
        let bias = pseudo_random(c_out, 4);
        let geometry = ConvGeometry::square(1, 1, 0);
        let packed = PackedWeights::pack(3 * c, c_out, &weight).map(|p| {
            if bf16 {
                p.with_bf16(&weight, 3 * c)
            } else {
                p
            }
        });
        let params = DenseParams {
            geometry: &geometry,
            weight: &weight,
            bias: &bias,
            activation: Activation::Silu,
            packed: packed.as_ref(),
        };
        let joined: Vec<f32> = (0..pixels)
            .flat_map(|m| {
                let mut px = wide[m * 2 * c..][..2 * c].to_vec();
                px.extend_from_slice(&narrow[m * c..][..c]);
                px
            })
            .collect();
        let shape = Nhwc { n, h, w, c };
        let want = dense_conv_new(&joined, Nhwc { c: 3 * c, ..shape }, &params, None);
        let parts = [
            Part {
                data: &wide,
                stride: 2 * c,
            },
            Part {
                data: &wide[c..],
                stride: 2 * c,
            },
            Part {
                data: &narrow,
                stride: c,
            },
        ];
        let got = dense_conv_concat_new(&parts, shape, &params);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "bf16 {bf16}: {g} vs {w}"
            );
        }
        got
    }
}
