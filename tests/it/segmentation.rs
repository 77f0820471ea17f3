//! Segmentation networks against the real PyTorch implementations (torchvision,
//! segmentation_models_pytorch, transformers' SegFormer; wick's `lraspp_*efficientnet_lite*` against torchvision's
//! `LRASPPHead` on timm's EfficientNet-Lite). `tests/parity/generate_segmentation.py` ran each model once
//! with the deterministic `synth` weights on a non-square input and committed a checksum of
//! its logits, 64 sampled logits and the argmax map; here the same weights are rebuilt and
//! wick's network must agree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use wick::model::layers::to_nhwc;
use wick::model::segment::{self as segmentation, SegmentationArgs};
use wick::model::weights::{synthesize, Weights};

#[derive(Deserialize)]
struct Fixture {
    id: String,
    architecture: String,
    num_classes: usize,
    input_shape: Vec<usize>,
    input_scale: f64,
    tensors: Vec<(String, Vec<usize>)>,
    logits_sum: f64,
    logits_sum_sq: f64,
    samples: Vec<(usize, usize, usize, f32)>,
    argmax: Vec<String>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/segmentation")
}

/// Relative tolerance on logits (relative to max(1, |reference|)): f32 summation order differs
/// from PyTorch's over thousands of terms per logit (measured at most 7.9e-6, FPN ResNet-34 and
/// DeepLabV3 ResNet-101, 2026-12-07); a wrong BN epsilon, dilation or align_corners mode moves
/// logits by 1e-2 or more.
const LOGIT_TOLERANCE: f32 = 1e-4;
/// Pixels whose two best logits are closer than this may legitimately flip their argmax:
/// the logits themselves differ from PyTorch's by up to ~1e-5 absolute, so a near tie can
/// break either way without any real disagreement.
const TIE_GAP: f32 = 1e-4;

fn check(id: &str) -> Result<()> {
    let path = fixtures_dir().join(format!("{id}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let fixture: Fixture = serde_json::from_str(&text)?;
    assert_eq!(fixture.id, id);
    let tensors: HashMap<String, Tensor> = fixture
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    let weights = Weights::from_tensors(tensors);
    let network = segmentation::build(&SegmentationArgs {
        name: &fixture.architecture,
        weights: &weights,
        out_channels: fixture.num_classes,
    })?;
    assert_eq!(network.out_channels(), fixture.num_classes);
    let input = (synthesize("input", &fixture.input_shape) * fixture.input_scale)?;
    let logits = network.forward(&to_nhwc(&input)?)?;
    let (n, h, w, c) = logits.dims4()?;
    assert_eq!(
        [n, c, h, w],
        [
            1,
            fixture.num_classes,
            fixture.input_shape[2],
            fixture.input_shape[3]
        ],
        "{id}: logits at the input resolution"
    );
    let values = logits.flatten_all()?.to_vec1::<f32>()?;
    let at = |c_: usize, y: usize, x: usize| values[(y * w + x) * c + c_];

    for &(c_, y, x, want) in &fixture.samples {
        let got = at(c_, y, x);
        assert!(
            (got - want).abs() <= LOGIT_TOLERANCE * want.abs().max(1.0),
            "{id}: logit [{c_}, {y}, {x}] = {got}, PyTorch {want}"
        );
    }
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    let sum_sq: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let count = values.len() as f64;
    // Per-element tolerance, summed: the mean logit must agree to 1e-3.
    assert!(
        (sum - fixture.logits_sum).abs() <= 1e-3 * count.max(fixture.logits_sum.abs()),
        "{id}: logits sum {sum}, PyTorch {}",
        fixture.logits_sum
    );
    assert!(
        (sum_sq - fixture.logits_sum_sq).abs() <= 1e-3 * fixture.logits_sum_sq.max(1.0),
        "{id}: logits sum of squares {sum_sq}, PyTorch {}",
        fixture.logits_sum_sq
    );

    let (mut mismatches, mut excused) = (0, 0);
    for (y, row) in fixture.argmax.iter().enumerate() {
        for (x, digit) in row.chars().enumerate() {
            let want = digit.to_digit(36).context("argmax digit")? as usize;
            let pixel: Vec<f32> = (0..c).map(|k| at(k, y, x)).collect();
            let (got, gap) = if c == 1 {
                (usize::from(pixel[0] > 0.0), pixel[0].abs())
            } else {
                let mut order: Vec<usize> = (0..c).collect();
                order.sort_by(|&a, &b| pixel[b].total_cmp(&pixel[a]));
                (order[0], pixel[order[0]] - pixel[order[1]])
            };
            if got != want {
                if gap < TIE_GAP {
                    excused += 1;
                } else {
                    mismatches += 1;
                }
            }
        }
    }
    assert_eq!(
        mismatches, 0,
        "{id}: {mismatches} pixels disagree with PyTorch's label map ({excused} near ties excused)"
    );
    Ok(())
}

macro_rules! segmentation_parity_tests {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() -> Result<()> {
            check(stringify!($name))
        })*

        /// Every committed fixture has a test above.
        #[test]
        fn every_segmentation_fixture_is_tested() -> Result<()> {
            let tested = [$(stringify!($name)),*];
            for entry in std::fs::read_dir(fixtures_dir())? {
                let path = entry?.path();
                let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                assert!(tested.contains(&id.as_str()), "fixture {id} has no parity test");
            }
            Ok(())
        }
    };
}

segmentation_parity_tests!(
    torchvision_deeplabv3_resnet50,
    torchvision_deeplabv3_resnet101,
    torchvision_deeplabv3_mobilenet_v3_large,
    torchvision_lraspp_mobilenet_v3_large,
    smp_deeplabv3plus_resnet50,
    smp_deeplabv3plus_resnet34,
    smp_deeplabv3plus_resnet50_binary,
    smp_unet_resnet34,
    smp_unet_resnet50_binary,
    smp_fpn_resnet34,
    smp_fpn_resnet50,
    smp_unet_efficientnet_b0,
    smp_fpn_efficientnet_b0,
    smp_unet_timm_efficientnet_b0_binary,
    smp_fpn_timm_efficientnet_b0,
    timm_lraspp_efficientnet_lite0,
    timm_lraspp_tf_efficientnet_lite0,
    timm_lraspp_tf_efficientnet_lite2_binary,
    hf_segformer_b0,
    hf_segformer_b2,
);
