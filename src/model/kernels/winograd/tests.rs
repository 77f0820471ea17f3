//! Winograd against the direct convolution, cached and streamed.

use super::*;
use crate::model::kernels::dense::{PackedWeights, Target};
use crate::model::kernels::{reference_layer, Activation, ConvGeometry, Padding};

/// Winograd against the direct definition for one layer, on both paths (the streamed one with
/// transformed input groups of at most `max_group_bytes`): within 1e-5 of the output's
/// largest magnitude (the transforms' rounding), bias, residual and activation included.
fn check(shape: Nhwc, geometry: ConvGeometry, c_out: usize, residual: bool, act: Activation) {
    check_grouped(shape, geometry, c_out, (residual, act), usize::MAX);
}

fn check_grouped(
    shape: Nhwc,
    geometry: ConvGeometry,
    c_out: usize,
    (residual, act): (bool, Activation),
    max_group_bytes: usize,
) {
    let layer = reference_layer(shape, &geometry, c_out, (residual, act), 3);
    let Some(weights) = WinogradWeights::new(&layer.weight, shape.c, c_out) else {
        return; // no vector unit: the direct path runs instead
    };
    let filters = PackedWeights::pack(9 * shape.c, c_out, &layer.weight).expect("a vector unit");
    let (rows, expected) = (layer.rows, &layer.expected);
    for streamed in [false, true] {
        // A row stride wider than c_out: the gap must stay untouched.
        let stride = c_out + 5;
        let mut out = vec![f32::NAN; rows * stride];
        let target = Target {
            data: out.as_mut_ptr(),
            row_stride: stride,
            bias: &layer.bias,
            residual: residual.then_some(&layer.residual[..]),
            activation: act,
        };
        let (input, dilation) = (&layer.input, geometry.dilation);
        // SAFETY: `out` holds every row at `stride`; nothing aliases it.
        unsafe {
            if streamed {
                let (res, bytes) = (layer.res, max_group_bytes);
                streamed::run_grouped(input, shape, res, dilation, &filters, &target, bytes);
            } else {
                run(input, shape, layer.res, dilation, &weights, &target);
            }
        }
        let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for r in 0..rows {
            for o in 0..c_out {
                let (got, want) = (out[r * stride + o], expected[r * c_out + o]);
                assert!(
                    (got - want).abs() <= 1e-5 * scale,
                    "streamed {streamed}: {shape:?} {geometry:?} row {r} channel {o}: {got} vs {want}"
                );
            }
            assert!(out[r * stride + c_out..][..5].iter().all(|x| x.is_nan()));
        }
    }
}

#[test]
fn streams_blocks_of_channels_over_groups_of_tiles() {
    // 150 output channels: blocks of whole panels and a ragged last one; a 4-tile budget of
    // transformed input (at 24 channels in) makes several groups, the last one short.
    let max_group_bytes = 4 * POINTS * 24 * size_of::<f32>();
    check_grouped(
        Nhwc {
            n: 2,
            h: 13,
            w: 10,
            c: 24,
        },
        three_by_three(1, 1),
        150,
        (true, Activation::Relu),
        max_group_bytes,
    );
    check_grouped(
        Nhwc {
            n: 1,
            h: 17,
            w: 15,
            c: 40,
        },
        three_by_three(1, 2),
        72,
        (false, Activation::Silu),
        max_group_bytes,
    );
}

#[test]
fn keeps_filters_until_the_budget_is_spent() {
    let budget = Budget(AtomicUsize::new(0));
    let layer = POINTS * 512 * 512 * size_of::<f32>(); // 38 MB
    assert!(budget.claim(layer, KEPT_BYTES));
    assert!(budget.claim(3 * layer, KEPT_BYTES), "four layers: 151 MB");
    assert!(
        !budget.claim(layer, KEPT_BYTES),
        "a fifth would pass 176 MB"
    );
    let small = POINTS * 128 * 128 * size_of::<f32>(); // 2.4 MB
    assert!(budget.claim(small, KEPT_BYTES), "a refusal takes nothing");
    budget.release(layer);
    assert!(
        budget.claim(layer, KEPT_BYTES),
        "released bytes are claimed again"
    );
}

fn three_by_three(padding: usize, dilation: usize) -> ConvGeometry {
    ConvGeometry {
        kernel: (3, 3),
        stride: (1, 1),
        dilation: (dilation, dilation),
        padding: Padding::symmetric(padding * dilation),
    }
}

#[test]
fn matches_the_direct_convolution_on_whole_and_ragged_tiles() {
    let shape = |n, h, w, c| Nhwc { n, h, w, c };
    check(
        shape(1, 8, 8, 16),
        three_by_three(1, 1),
        16,
        false,
        Activation::Identity,
    );
    check(
        shape(2, 13, 7, 19),
        three_by_three(1, 1),
        21,
        true,
        Activation::Relu,
    );
    check(
        shape(1, 9, 11, 8),
        three_by_three(0, 1),
        40,
        false,
        Activation::Silu,
    );
    check(
        shape(1, 30, 30, 64),
        three_by_three(1, 1),
        64,
        true,
        Activation::Relu,
    );
}

#[test]
fn is_chosen_only_where_tiles_are_many_and_mostly_full() {
    assert!(pays_off(1, (56, 56), (1, 1), (64, 64)));
    assert!(!pays_off(1, (56, 56), (1, 1), (16, 64)), "too few channels");
    assert!(!pays_off(1, (4, 4), (1, 1), (64, 64)), "one tile");
    // DeepLabV3 ResNet-50 at 512: its dilated layer3 / layer4 (2, 4) fill every tile on the
    // 64x64 map, its ASPP's 12 fills 44% of them and 36 a fifth.
    assert!(pays_off(1, (64, 64), (2, 2), (256, 256)));
    assert!(pays_off(1, (64, 64), (4, 4), (512, 512)));
    assert!(!pays_off(1, (64, 64), (12, 12), (2048, 256)));
    assert!(!pays_off(1, (64, 64), (36, 36), (2048, 256)));
}

#[test]
fn matches_the_direct_convolution_when_dilated() {
    let shape = |n, h, w, c| Nhwc { n, h, w, c };
    check(
        shape(1, 17, 15, 24),
        three_by_three(1, 2),
        24,
        false,
        Activation::Relu,
    );
    check(
        shape(1, 20, 21, 8),
        three_by_three(1, 4),
        17,
        true,
        Activation::Identity,
    );
    check(
        shape(1, 5, 6, 8),
        three_by_three(1, 3),
        8,
        false,
        Activation::Identity,
    );
}
