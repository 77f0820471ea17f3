//! The parts of Atrous Spatial Pyramid Pooling (`convs.0` 1x1 branch, `convs.4` image
//! pooling, `project`) that DeepLabV3 and DeepLabV3+ train: the trainable twin of the model
//! core's `crate::model::segment::aspp`, computing what it computes in eval mode, with the
//! checkpoint keys and channel count defined there.
//!
//! The projection is a 1x1 convolution over the five branches' concatenation; it is computed
//! as the sum of one product per branch, so the pooling branch (one vector per image, which
//! the reference upsamples to every pixel) is projected once and broadcast. Dropout (0.5,
//! after the projection in both libraries) is left out: it is the identity in eval mode, and
//! training without it keeps the trained network the served one and the steps deterministic.

use candle_core::Tensor;

use super::params::{Params, Specs};
use super::pixels::matmul_pixels;
pub(super) use crate::model::segment::aspp::ASPP_CHANNELS;
use crate::model::segment::aspp::{BRANCH_1X1_KEYS, POOLING_KEYS, PROJECT_KEYS};

/// `{prefix}.{leaf}`.
fn key(prefix: &str, leaf: &str) -> String {
    format!("{prefix}.{leaf}")
}

/// The trained tensors of the 1x1 branch, the pooling branch and the projection of the ASPP
/// under `prefix` over `channels` input channels.
pub(super) fn specs(specs: &mut Specs, prefix: &str, channels: usize) {
    specs.conv(&key(prefix, BRANCH_1X1_KEYS.0), ASPP_CHANNELS, channels, 1);
    specs.batch_norm(&key(prefix, BRANCH_1X1_KEYS.1), ASPP_CHANNELS);
    specs.conv(&key(prefix, POOLING_KEYS.0), ASPP_CHANNELS, channels, 1);
    specs.batch_norm(&key(prefix, POOLING_KEYS.1), ASPP_CHANNELS);
    specs.conv(
        &key(prefix, PROJECT_KEYS.0),
        ASPP_CHANNELS,
        5 * ASPP_CHANNELS,
        1,
    );
    specs.batch_norm(&key(prefix, PROJECT_KEYS.1), ASPP_CHANNELS);
}

/// The ASPP output `(b, p, 256)` for the input `x` `(b, p, c)` and the three dilated branches'
/// outputs `atrous` (after their batch norm and ReLU, `(b, p, 256)` each).
pub(super) fn project(
    p: &Params,
    prefix: &str,
    x: &Tensor,
    atrous: &[Tensor; 3],
) -> candle_core::Result<Tensor> {
    let project = key(prefix, PROJECT_KEYS.0);
    let block = |i: usize| p.matrix(&project, Some((i * ASPP_CHANNELS, ASPP_CHANNELS)));
    let branch_1x1 = p.bn_relu(
        &p.conv1x1(x, &key(prefix, BRANCH_1X1_KEYS.0))?,
        &key(prefix, BRANCH_1X1_KEYS.1),
    )?;
    let mut sum = matmul_pixels(&branch_1x1, &block(0)?)?;
    for (i, a) in atrous.iter().enumerate() {
        sum = (sum + matmul_pixels(a, &block(i + 1)?)?)?;
    }
    let pooled = p.bn_relu(
        &p.conv1x1(&x.mean_keepdim(1)?, &key(prefix, POOLING_KEYS.0))?,
        &key(prefix, POOLING_KEYS.1),
    )?;
    let sum = sum.broadcast_add(&matmul_pixels(&pooled, &block(4)?)?)?;
    p.bn_relu(&sum, &key(prefix, PROJECT_KEYS.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::segment::decoder::gradcheck::{check_gradients, random};
    use candle_core::{DType, Var};

    /// The ASPP (1x1 branch, three dilated separable branches, pooling branch, projection),
    /// every trained tensor and the input, against finite differences.
    #[test]
    fn aspp_with_pooling_branch_gradients_match_finite_differences() -> candle_core::Result<()> {
        let (b, h, w, c) = (2, 3, 4, 3);
        let mut specs = Specs::default();
        super::specs(&mut specs, "aspp", c);
        for i in 1..=3 {
            specs.depthwise(&format!("aspp.convs.{i}.0.0"), c);
            specs.conv(&format!("aspp.convs.{i}.0.1"), ASPP_CHANNELS, c, 1);
            specs.batch_norm(&format!("aspp.convs.{i}.1"), ASPP_CHANNELS);
        }
        let p = specs.build(None, 5, DType::F64)?;
        let x = Var::from_tensor(&random(&[b, h * w, c], 1, DType::F64)?)?;
        let probe = random(&[b, h * w, ASPP_CHANNELS], 2, DType::F64)?;
        let f = || -> candle_core::Result<Tensor> {
            let atrous = [1, 2, 3].map(|i| {
                p.separable_bn_relu(
                    &x,
                    (h, w),
                    [1, 2, 5][i - 1],
                    &format!("aspp.convs.{i}.0"),
                    &format!("aspp.convs.{i}.1"),
                )
            });
            let [a, b2, c2] = atrous;
            let y = project(&p, "aspp", &x, &[a?, b2?, c2?])?;
            (y * &probe)?.sum_all()
        };
        let mut vars: Vec<(&str, &Var)> = p.vars.iter().map(|(k, v)| (k.as_str(), v)).collect();
        vars.push(("input", &x));
        check_gradients(&f, &vars)
    }
}
