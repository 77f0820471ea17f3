//! Whole-decoder gradient checks: every trained tensor of every decoder variant, through the
//! segmentation loss on upsampled logits with ignored pixels, against finite differences.

use candle_core::DType;

use super::gradcheck::{check_gradients, random};
use super::*;
use crate::train::segment::dataset::IGNORED;
use crate::train::segment::loss::{loss, targets};

fn features(b: usize, sizes: &[(usize, usize, usize)], seed: u64) -> FeatureBatch {
    let maps = sizes
        .iter()
        .zip(seed..)
        .map(|(&(h, w, c), s)| random(&[b, h * w, c], s, DType::F64).expect("tensor"))
        .collect();
    FeatureBatch {
        maps,
        sizes: sizes.iter().map(|&(h, w, _)| (h, w)).collect(),
    }
}

/// Every gradient autograd computes for `kind`'s trained tensors, against central finite
/// differences of the loss, in f64; also the variables every variant must train.
fn gradient_check(
    kind: Decoder,
    k: usize,
    batch: &FeatureBatch,
    out: (usize, usize),
) -> Vec<String> {
    let decoder = TrainableDecoder::new(kind, k, None, 3, DType::F64).expect("decoder");
    let pixels = batch.maps[0].dim(0).expect("dim") * out.0 * out.1;
    let classes: Vec<u8> = (0..pixels)
        .map(|i| {
            if i % 7 == 3 {
                IGNORED
            } else {
                (i % k.max(2)) as u8
            }
        })
        .collect();
    let t = targets(&classes, k, DType::F64).expect("targets");
    let f = || loss(&decoder.forward(batch, out)?, &t);
    let vars: Vec<(&str, &Var)> = decoder
        .params
        .vars
        .iter()
        .map(|(key, v)| (key.as_str(), v))
        .collect();
    check_gradients(&f, &vars).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    decoder.var_keys()
}

#[test]
fn lraspp_gradients_match_finite_differences() {
    let kind = Decoder::LrAspp {
        low_channels: 3,
        high_channels: 5,
    };
    let batch = features(2, &[(4, 6, 3), (2, 3, 5)], 1);
    let keys = gradient_check(kind, 3, &batch, (7, 11));
    assert_eq!(keys.len(), 8, "{keys:?}");
    // Binary: one output, BCE.
    gradient_check(kind, 1, &batch, (8, 12));
}

#[test]
fn lraspp_classifier_gradients_match_finite_differences() {
    let kind = Decoder::LrAsppClassifiers { low_channels: 3 };
    let batch = features(2, &[(4, 6, 3), (2, 3, 128)], 2);
    let keys = gradient_check(kind, 3, &batch, (7, 11));
    assert!(keys.iter().all(|k| k.contains("_classifier.")), "{keys:?}");
}

#[test]
fn final_conv_gradients_match_finite_differences() {
    for align_corners in [false, true] {
        let kind = Decoder::FinalConv {
            key: "head",
            channels: 4,
            align_corners,
        };
        let batch = features(2, &[(3, 5, 4)], 2);
        let keys = gradient_check(kind, 3, &batch, (12, 20));
        assert_eq!(keys, ["head.weight", "head.bias"]);
    }
}

/// smp U-Net's head: a 3x3 convolution with bias at the input resolution.
#[test]
fn final_conv3x3_gradients_match_finite_differences() {
    let kind = Decoder::FinalConv3x3 {
        key: "head",
        channels: 4,
    };
    let batch = features(2, &[(5, 6, 4)], 4);
    let keys = gradient_check(kind, 3, &batch, (5, 6));
    assert_eq!(keys, ["head.weight", "head.bias"]);
    gradient_check(kind, 1, &batch, (5, 6));
}

/// DeepLabV3's head after the dilated branches: 1x1 branch, pooling branch, projection,
/// dense 3x3, classifier; features = encoder output and three 256-channel branch outputs.
#[test]
fn deeplabv3_post_aspp_gradients_match_finite_differences() {
    let kind = Decoder::DeepLabV3 { channels: 5 };
    let (h, w) = (3, 4);
    let batch = features(2, &[(h, w, 5), (h, w, 256), (h, w, 256), (h, w, 256)], 3);
    let keys = gradient_check(kind, 3, &batch, (10, 13));
    for key in [
        "classifier.0.convs.0.0.weight",
        "classifier.0.convs.4.1.weight",
        "classifier.0.project.0.weight",
        "classifier.0.project.1.bias",
        "classifier.1.weight",
        "classifier.2.weight",
        "classifier.4.bias",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not trained: {keys:?}");
    }
    assert!(!keys.iter().any(|k| k.starts_with("classifier.0.convs.1.")));
    gradient_check(kind, 1, &batch, (6, 8));
}

/// DeepLabV3+'s whole decoder: separable dilated ASPP with pooling, the separable 3x3 after
/// it, the x4 align-corners upsampling, block1 on layer1, block2 over the concatenation and
/// the head; layer4 at (2, 3), layer1 at (8, 12), logits upsampled x4.
#[test]
fn deeplabv3plus_decoder_gradients_match_finite_differences() {
    let kind = Decoder::DeepLabV3Plus {
        high_channels: 6,
        low_channels: 4,
    };
    let batch = features(2, &[(2, 3, 6), (8, 12, 4)], 4);
    let keys = gradient_check(kind, 3, &batch, (32, 48));
    assert_eq!(keys.len(), 34, "{keys:?}");
    gradient_check(kind, 1, &batch, (32, 48));
}

#[test]
fn deeplabv3plus_rejects_layer1_not_four_times_layer4() {
    let kind = Decoder::DeepLabV3Plus {
        high_channels: 6,
        low_channels: 4,
    };
    let decoder = TrainableDecoder::new(kind, 2, None, 1, DType::F64).expect("decoder");
    let batch = features(1, &[(2, 3, 6), (8, 10, 4)], 5);
    let err = decoder
        .forward(&batch, (32, 40))
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("multiple of 16")),
        "{err:?}"
    );
}
