//! Every architecture against the real PyTorch implementation (torchvision, timm,
//! efficientnet_lite_pytorch, transformers). `tests/parity/generate.py` (EfficientNet B0-B7 and
//! V2: `generate_effnet.py`; ViT and DeiT: `generate_vit.py`; ConvNeXt:
//! `generate_convnext.py`) ran each model once with weights from a deterministic formula and
//! saved its logits; here the same formula rebuilds the exact state dict, and wick's network
//! must give the same logits. No weight file is involved.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use wick::model::classify::{self as arch, BuildArgs};
use wick::model::precision::{self, Precision};
use wick::model::weights::{synthesize, Weights};

#[derive(Deserialize)]
struct Fixture {
    id: String,
    architecture: String,
    num_classes: usize,
    input_shape: Vec<usize>,
    tensors: Vec<(String, Vec<usize>)>,
    logits: Vec<Vec<f32>>,
    input_scale: f64,
    logits_scaled: Vec<Vec<f32>>,
    /// Hugging Face fixtures: the `config.json` fields the builder reads.
    #[serde(default)]
    config: BTreeMap<String, serde_json::Value>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn load(id: &str) -> Result<Fixture> {
    let path = fixtures_dir().join(format!("{id}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Largest deviation from the reference, relative to max(1, |reference|) per element: f32
/// summation order differs from PyTorch's, while a wrong BN epsilon (the subtlest bug the
/// fixtures catch) moves logits by ~7e-4.
fn max_deviation(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    got.iter()
        .flatten()
        .zip(want.iter().flatten())
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// One batch's logits, one row per image.
type Logits = Vec<Vec<f32>>;

/// Logits of fixture `id` (both input scales) from wick's network built in `precision`,
/// next to PyTorch's.
fn logits_in(id: &str, precision: Precision) -> Result<Vec<(Logits, Logits)>> {
    let fixture = load(id)?;
    assert_eq!(fixture.id, id);
    let tensors: HashMap<String, Tensor> = fixture
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    let weights = Weights::from_tensors(tensors);
    let network = precision::while_loading(precision, || {
        arch::build(&BuildArgs {
            name: &fixture.architecture,
            weights: &weights,
            num_classes: fixture.num_classes,
            config: &fixture.config,
        })
    })?;
    let input = synthesize("input", &fixture.input_shape);
    let mut pairs = Vec::new();
    for (scale, want) in [
        (1.0, fixture.logits),
        (fixture.input_scale, fixture.logits_scaled),
    ] {
        pairs.push((network.forward(&(&input * scale)?)?.to_vec2::<f32>()?, want));
    }
    Ok(pairs)
}

fn check(id: &str) -> Result<()> {
    for (logits, want) in logits_in(id, Precision::F32)? {
        let deviation = max_deviation(&logits, &want);
        assert!(
            deviation < 1e-4,
            "{id}: logits deviate from PyTorch by {deviation:e}\n got {:?}\nwant {:?}",
            &logits[0][..4],
            &want[0][..4]
        );
    }
    Ok(())
}

macro_rules! parity_tests {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() -> Result<()> {
            check(stringify!($name))
        })*

        /// Every committed fixture has a test above, so a new one cannot be silently skipped.
        #[test]
        fn every_fixture_is_tested() -> Result<()> {
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

parity_tests!(
    torchvision_resnet18,
    torchvision_resnet34,
    torchvision_resnet50,
    torchvision_resnet101,
    torchvision_resnet152,
    timm_resnet50,
    timm_mobilenetv3_large_100,
    timm_mobilenetv3_small_100,
    torchvision_densenet121,
    torchvision_mobilenet_v2,
    torchvision_mobilenet_v3_large,
    torchvision_mobilenet_v3_small,
    timm_efficientnet_lite0,
    timm_efficientnet_lite1,
    timm_efficientnet_lite2,
    timm_efficientnet_lite3,
    timm_efficientnet_lite4,
    timm_tf_efficientnet_lite0,
    timm_tf_efficientnet_lite1,
    timm_tf_efficientnet_lite2,
    timm_tf_efficientnet_lite3,
    timm_tf_efficientnet_lite4,
    lukemelas_efficientnet_lite0,
    lukemelas_efficientnet_lite1,
    lukemelas_efficientnet_lite2,
    lukemelas_efficientnet_lite3,
    lukemelas_efficientnet_lite4,
    torchvision_efficientnet_b0,
    torchvision_efficientnet_b3,
    torchvision_efficientnet_b5,
    torchvision_efficientnet_v2_s,
    timm_efficientnet_b0,
    timm_tf_efficientnet_b0,
    timm_tf_efficientnet_b3,
    timm_tf_efficientnetv2_s,
    timm_efficientnetv2_rw_s,
    timm_vit_tiny_patch16_224,
    timm_vit_small_patch32_384,
    timm_deit_tiny_patch16_224,
    timm_deit_small_patch16_224,
    timm_deit_tiny_distilled_patch16_224,
    timm_deit_small_distilled_patch16_224,
    timm_vit_tiny_patch16_224_at_384x384,
    timm_vit_small_patch32_384_at_224x288,
    timm_vit_small_patch32_384_at_192x768,
    timm_deit_tiny_distilled_patch16_224_at_288x288,
    hf_vit_small_config,
    hf_vit_base_patch16_224,
    timm_convnext_atto,
    timm_convnext_tiny,
    hf_convnext_small_config,
    hf_convnext_tiny_224,
);

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `"precision": "bf16"`: ResNet-50 (the network issue 16's bf16 mode is measured on) keeps
/// PyTorch's top-1 for every image of both batches, its logits within the bound the docs give
/// (`docs/performance.md`, "bf16"); where the CPU has no AVX512-BF16 the request falls back to
/// f32 and the logits are the f32 ones exactly.
#[test]
fn resnet50_in_bf16_keeps_pytorchs_top1_and_bounds_its_logit_error() -> Result<()> {
    let id = "torchvision_resnet50";
    let in_bf16 = logits_in(id, Precision::Bf16)?;
    if !precision::bf16_supported() {
        let in_f32 = logits_in(id, Precision::F32)?;
        assert_eq!(in_bf16, in_f32, "the fallback is f32");
        return Ok(());
    }
    for (logits, want) in in_bf16 {
        for (got, want) in logits.iter().zip(&want) {
            assert_eq!(argmax(got), argmax(want), "top-1 in bf16");
        }
        let deviation = max_deviation(&logits, &want);
        assert!(deviation > 1e-4, "bf16 ran: {deviation:e} is f32's error");
        let range = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        let error = (logits.iter().flatten().zip(want.iter().flatten()))
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(
            error < BF16_LOGIT_BOUND * range,
            "bf16 logits deviate by {error} of a largest logit {range}"
        );
    }
    Ok(())
}

/// The largest logit error bf16 may cause on the ResNet-50 fixture, as a fraction of the
/// largest |logit|: measured 0.37% at both input scales (0.012 of 3.2, 0.089 of 24.2), see
/// `docs/performance.md`.
const BF16_LOGIT_BOUND: f32 = 0.01;
