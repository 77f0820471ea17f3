//! The packed kernel against the definition: tile widths, geometries, gathered windows,
//! reduction blocks, epilogues.

use super::*;
use crate::model::kernels::{
    dense_conv, reference_layer, ConvOutput, DenseParams, Padding, ReferenceLayer,
};

/// Packed product vs the definition, with bias, residual and activation applied as the
/// unpacked path does, for one layer.
fn check(shape: Nhwc, geometry: ConvGeometry, c_out: usize, residual: bool, act: Activation) {
    let layer = reference_layer(shape, &geometry, c_out, (residual, act), 7);
    let ReferenceLayer {
        input,
        weight,
        bias,
        residual: extra,
        expected,
        rows,
        ..
    } = layer;
    let (kh, kw) = geometry.kernel;
    let Some(packed) = PackedWeights::pack(kh * kw * shape.c, c_out, &weight) else {
        return; // no vector unit: the portable path is the one tested in conv.rs
    };
    let params = DenseParams {
        geometry: &geometry,
        weight: &weight,
        bias: &bias,
        activation: act,
        packed: Some(&packed),
    };
    // A row stride wider than c_out: the gap must stay untouched.
    let stride = c_out + 3;
    let mut out = vec![f32::NAN; rows * stride];
    dense_conv(
        &input,
        shape,
        &params,
        ConvOutput {
            data: &mut out,
            row_stride: stride,
            residual: residual.then_some(&extra[..]),
        },
    );
    let scale = (kh * kw * shape.c) as f32;
    for r in 0..rows {
        for c in 0..c_out {
            let (got, want) = (out[r * stride + c], expected[r * c_out + c]);
            assert!(
                (got - want).abs() <= 2e-6 * scale + 1e-5,
                "{shape:?} {geometry:?} c_out {c_out}: row {r} col {c}: {got} vs {want}"
            );
        }
        assert!(out[r * stride + c_out..][..3].iter().all(|x| x.is_nan()));
    }
}

#[test]
fn packed_convolutions_match_the_definition_over_tile_widths_and_geometries() {
    let geometries = [
        ConvGeometry::square(1, 1, 0),
        ConvGeometry::square(3, 1, 1),
        ConvGeometry::square(3, 2, 1),
        ConvGeometry::square(5, 1, 2),
        ConvGeometry::square(7, 2, 3),
        ConvGeometry {
            kernel: (3, 3),
            stride: (2, 2),
            dilation: (1, 1),
            padding: Padding::TfSame,
        },
        ConvGeometry {
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (2, 2),
            padding: Padding::symmetric(2),
        },
    ];
    // Input channels that gather their windows (an RGB stem) and that do not; output
    // widths that pick every panel width and leave partial vectors and tiles.
    for c in [3, 5, 12] {
        let shape = Nhwc {
            n: 2,
            h: 9,
            w: 7,
            c,
        };
        for c_out in [1, 7, 16, 24, 40, 64, 100] {
            for geometry in geometries {
                check(shape, geometry, c_out, false, Activation::Relu6);
            }
        }
    }
}

#[test]
fn one_row_runs_over_every_panel_width_with_each_epilogue() {
    // A batch-1 classifier head (1280 x 1000, split over the team) and squeeze-excitation
    // sized rows: every panel width, ragged last groups and partial vectors.
    let pixel = |c| Nhwc {
        n: 1,
        h: 1,
        w: 1,
        c,
    };
    let pointwise = ConvGeometry::square(1, 1, 0);
    for (c_in, c_out) in [(1280, 1000), (96, 24), (40, 7), (17, 100), (64, 1)] {
        check(pixel(c_in), pointwise, c_out, false, Activation::Identity);
    }
    for act in [Activation::Relu6, Activation::Hardswish, Activation::Silu] {
        for residual in [false, true] {
            check(pixel(48), pointwise, 72, residual, act);
        }
    }
}

#[test]
fn long_reductions_split_into_blocks_and_still_add_up() {
    // 3x3 over 300 channels splits each tap's channels; over 130 groups taps.
    for c in [130, 300] {
        let shape = Nhwc {
            n: 1,
            h: 6,
            w: 5,
            c,
        };
        check(
            shape,
            ConvGeometry::square(3, 1, 1),
            70,
            true,
            Activation::Silu,
        );
    }
    let pointwise = Nhwc {
        n: 1,
        h: 11,
        w: 3,
        c: 1100,
    };
    check(
        pointwise,
        ConvGeometry::square(1, 1, 0),
        33,
        false,
        Activation::Relu,
    );
}

#[test]
fn residual_and_every_activation_are_applied_after_the_sum() {
    let shape = Nhwc {
        n: 3,
        h: 4,
        w: 4,
        c: 8,
    };
    for act in [
        Activation::Identity,
        Activation::Relu,
        Activation::Relu6,
        Activation::Silu,
        Activation::Hardswish,
        Activation::Hardsigmoid,
        Activation::LeakyRelu(0.1),
        Activation::Sigmoid,
        Activation::Gelu,
    ] {
        for residual in [false, true] {
            check(shape, ConvGeometry::square(1, 1, 0), 48, residual, act);
        }
    }
}

#[test]
fn reduction_blocks_cover_every_tap_and_channel_once() {
    for (taps, c, nr) in [
        (9, 300, 64),
        (9, 130, 64),
        (1, 2048, 48),
        (1, 100, 16),
        (25, 7, 32),
    ] {
        let mut seen = vec![0u8; taps * c];
        for b in reduction_blocks(taps, c, nr) {
            for t in b.taps.0..b.taps.1 {
                for ch in b.channels.0..b.channels.1 {
                    seen[t * c + ch] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "taps {taps} c {c} nr {nr}");
    }
}

fn round_to_bf16(xs: &[f32]) -> Vec<f32> {
    xs.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The bf16 kernel against the f32 kernel on the same operands rounded to bf16: products of
/// bf16 values are exact in f32, so the two differ only in the order of their sums. Unrounded
/// operands differ from these by ~1e-3 of the sum: a kernel that rounded one side
/// differently, paired the wrong rows or misplaced a tap's channels fails by far more than
/// this tolerance.
#[test]
fn bf16_products_match_the_f32_kernel_on_rounded_operands() {
    let cases = [
        (
            8,
            ConvGeometry::square(1, 1, 0),
            48,
            false,
            Activation::Relu,
        ),
        (
            12,
            ConvGeometry::square(3, 1, 1),
            100,
            true,
            Activation::Silu,
        ),
        (
            64,
            ConvGeometry::square(3, 2, 1),
            64,
            false,
            Activation::Identity,
        ),
        (
            8,
            ConvGeometry::square(7, 2, 3),
            24,
            false,
            Activation::Relu,
        ),
        (
            16,
            ConvGeometry {
                kernel: (3, 3),
                stride: (1, 1),
                dilation: (2, 2),
                padding: Padding::symmetric(2),
            },
            40,
            true,
            Activation::Relu6,
        ),
        (
            200,
            ConvGeometry::square(1, 1, 0),
            36,
            true,
            Activation::Identity,
        ),
    ];
    for (i, (c, geometry, c_out, residual, act)) in cases.into_iter().enumerate() {
        let shape = Nhwc {
            n: 2,
            h: 9,
            w: 11,
            c,
        };
        let layer = reference_layer(shape, &geometry, c_out, (residual, act), 11 + i as u32);
        let k = geometry.kernel.0 * geometry.kernel.1 * c;
        let rounded = round_to_bf16(&layer.weight);
        let Some(f32_packed) = PackedWeights::pack(k, c_out, &rounded) else {
            return; // no vector unit
        };
        let packed = PackedWeights::pack(k, c_out, &layer.weight)
            .expect("packs")
            .with_bf16(&layer.weight, c);
        if !bf16_supported() {
            assert!(!packed.is_bf16(), "no bf16 copy without AVX512-BF16");
            return;
        }
        assert!(packed.is_bf16());
        let run = |input: &[f32], weights: &PackedWeights| {
            let params = DenseParams {
                geometry: &geometry,
                weight: &[],
                bias: &layer.bias,
                activation: act,
                packed: Some(weights),
            };
            let mut out = vec![f32::NAN; layer.rows * c_out];
            dense_conv(
                input,
                shape,
                &params,
                ConvOutput {
                    data: &mut out,
                    row_stride: c_out,
                    residual: residual.then_some(&layer.residual[..]),
                },
            );
            out
        };
        let got = run(&layer.input, &packed);
        let want = run(&round_to_bf16(&layer.input), &f32_packed);
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * k as f32 + 1e-5,
                "case {i}: value {j}: bf16 kernel {g} vs f32 on rounded operands {w}"
            );
        }
        // And the rounding is real: f32 on the unrounded operands differs.
        let exact = run(
            &layer.input,
            &PackedWeights::pack(k, c_out, &layer.weight).unwrap(),
        );
        assert!(got.iter().zip(&exact).any(|(g, e)| (g - e).abs() > 1e-4));
    }
}
