//! `Segmenter::segment` end to end on a real photo: the label map has the photo's exact size,
//! tiling with overlap agrees with the single-pass result, tiny images work, the binary
//! threshold is honoured and bad settings are refused with the field named. Synthetic weights
//! (the parity formula): these tests check geometry and plumbing; the numbers themselves are
//! covered by the parity tests in `segmentation.rs`.

use std::path::Path;

use anyhow::Result;
use image::RgbImage;
use serde_json::json;
use wick::model::package::Package;
use wick::model::weights::Weights;
use wick::model::{LabelMap, ModelError, Segmenter};

use crate::support::fixture;

/// A package directory with `config` and a placeholder weights file (the weights themselves
/// are synthesized, never read from it).
#[allow(clippy::needless_pass_by_value)] // call sites read best with `json!` literals
fn segmenter(config: serde_json::Value) -> Result<Segmenter> {
    let dir = tempfile::tempdir()?;
    write_package(dir.path(), &config)?;
    let package = Package::open(dir.path())?;
    Ok(Segmenter::from_package(&package, &Weights::synthetic())?)
}

fn write_package(dir: &Path, config: &serde_json::Value) -> Result<()> {
    std::fs::write(dir.join("config.json"), serde_json::to_vec(config)?)?;
    std::fs::write(dir.join("model.safetensors"), b"")?;
    Ok(())
}

fn chelsea() -> Result<RgbImage> {
    Ok(image::open(fixture("chelsea.jpg"))?.to_rgb8())
}

#[allow(clippy::needless_pass_by_value)] // as above
fn lraspp(classes: usize, segmentation: serde_json::Value) -> Result<Segmenter> {
    segmenter(json!({
        "architecture": "lraspp_mobilenet_v3_large",
        "task": "segmentation",
        "num_classes": classes,
        "segmentation": segmentation,
    }))
}

fn differing_fraction(a: &LabelMap, b: &LabelMap) -> f64 {
    let differing = a
        .classes
        .iter()
        .zip(&b.classes)
        .filter(|(x, y)| x != y)
        .count();
    differing as f64 / a.classes.len() as f64
}

#[test]
fn label_map_has_the_photos_exact_size_and_several_classes() -> Result<()> {
    let photo = chelsea()?;
    let model = lraspp(21, json!({}))?;
    let map = model.segment(&photo, None)?;
    assert_eq!((map.width, map.height), photo.dimensions());
    assert_eq!(map.classes.len(), (photo.width() * photo.height()) as usize);
    let present = map.pixel_counts(21).iter().filter(|&&c| c > 0).count();
    assert!(
        present >= 2,
        "a real photo through the network gives more than one class"
    );
    assert!(map.classes.iter().all(|&c| c < 21));
    Ok(())
}

/// chelsea.jpg is 451x300; 192-pixel tiles with 64 pixels of overlap cut it into 3x2 tiles.
/// LR-ASPP gates its features with a global average (the `scale` branch) and MobileNetV3's
/// receptive field spans hundreds of pixels, so a tile sees a different gate and less context
/// than the whole photo and some pixels near class boundaries legitimately change; seams would
/// show as whole lines of disagreement at the tile edges instead. The stitching itself is
/// checked exactly by `tiles_stitch_to_exactly_the_whole_image_pass` (src/model/segmenter/
/// tiling.rs). The bound (10%) is what the global gate allows; measured with synthetic
/// weights: 4.49% (6.5% before tiles started on the 32-pixel grid).
#[test]
fn tiled_run_agrees_with_the_single_pass() -> Result<()> {
    let photo = chelsea()?;
    let whole = lraspp(21, json!({"tile_size": 512}))?.segment(&photo, None)?;
    let tiled = lraspp(21, json!({"tile_size": 192, "tile_overlap": 64}))?.segment(&photo, None)?;
    assert_eq!((tiled.width, tiled.height), photo.dimensions());
    let fraction = differing_fraction(&whole, &tiled);
    println!(
        "tiled vs single pass: {:.2}% of pixels differ",
        fraction * 100.0
    );
    assert!(fraction < 0.10, "{:.2}% of pixels differ", fraction * 100.0);
    // No seam: the columns at the inner tile boundaries (x = 128 and 256 start the 2nd and 3rd
    // tiles) disagree no more than the photo as a whole.
    for x in [128usize, 256] {
        let column = (0..tiled.height as usize)
            .filter(|&y| {
                let i = y * tiled.width as usize + x;
                whole.classes[i] != tiled.classes[i]
            })
            .count() as f64
            / f64::from(tiled.height);
        assert!(
            column <= (3.0 * fraction).max(0.05),
            "seam at x={x}: {column}"
        );
    }
    Ok(())
}

#[test]
fn tiny_and_odd_images_work_for_every_family() -> Result<()> {
    for architecture in ["lraspp_mobilenet_v3_large", "deeplabv3plus_resnet34"] {
        let model = segmenter(json!({
            "architecture": architecture,
            "task": "segmentation",
            "num_classes": 3,
        }))?;
        for (w, h) in [(5, 3), (1, 1), (3, 17), (33, 31)] {
            let image = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 40) as u8, (y * 15) as u8, 90])
            });
            let map = model.segment(&image, None)?;
            assert_eq!((map.width, map.height), (w, h), "{architecture}");
            assert_eq!(map.classes.len(), (w * h) as usize);
        }
    }
    Ok(())
}

#[test]
fn resized_run_maps_back_to_the_original_size() -> Result<()> {
    let photo = chelsea()?;
    let model = lraspp(21, json!({"resize_shorter_side": 120}))?;
    let map = model.segment(&photo, None)?;
    assert_eq!((map.width, map.height), photo.dimensions());
    let native = lraspp(21, json!({}))?.segment(&photo, None)?;
    // Same network at 2.5x lower resolution: the maps must still broadly agree.
    let fraction = differing_fraction(&map, &native);
    assert!(fraction < 0.5, "{:.1}% differ", fraction * 100.0);
    Ok(())
}

#[test]
fn binary_threshold_is_honoured_and_validated() -> Result<()> {
    let photo = chelsea()?;
    let model = segmenter(json!({
        "architecture": "deeplabv3plus_resnet34",
        "task": "segmentation",
        "label_names": ["building"],
        "segmentation": {"threshold": 0.4},
    }))?;
    assert!(model.is_binary());
    assert_eq!(model.labels(), ["background", "building"]);
    assert_eq!(model.default_threshold(), 0.4);
    let foreground = |t: Option<f32>| -> Result<u64> {
        let map = model.segment(&photo, t)?;
        assert!(map.classes.iter().all(|&c| c <= 1));
        Ok(map.pixel_counts(2)[1])
    };
    let (low, default, high) = (
        foreground(Some(0.05))?,
        foreground(None)?,
        foreground(Some(0.95))?,
    );
    assert!(low >= default && default >= high, "{low} {default} {high}");
    assert!(
        low > high,
        "the threshold changes the mask ({low} vs {high})"
    );
    assert_eq!(foreground(Some(0.4))?, default);
    for bad in [f32::NAN, 0.0, 1.0, -0.5, 1.5] {
        let err = model.segment(&photo, Some(bad)).unwrap_err().to_string();
        assert!(err.contains("threshold"), "{bad}: {err}");
    }
    Ok(())
}

#[test]
fn bad_packages_are_refused_with_the_field_named() -> Result<()> {
    let err = |config: serde_json::Value| -> String {
        match segmenter(config) {
            Ok(_) => "loaded".into(),
            Err(e) => e.to_string(),
        }
    };
    let base = |extra: serde_json::Value| {
        let mut config = json!({"architecture": "lraspp_mobilenet_v3_large", "task": "segmentation", "num_classes": 3});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        config
    };
    assert!(err(base(json!({"num_classes": 300}))).contains("num_classes"));
    assert!(
        err(base(json!({"segmentation": {"threshold": 1.0}}))).contains("segmentation.threshold")
    );
    assert!(err(base(json!({"segmentation": {"tile_size": 8}}))).contains("segmentation.tile_size"));
    assert!(err(base(json!({"segmentation": {"tile_overlap": 400}})))
        .contains("segmentation.tile_overlap"));
    assert!(err(base(json!({"segmentation": {"tile": 400}}))).contains("segmentation"));
    assert!(err(base(json!({"architecture": "unet"}))).contains("deeplabv3plus_resnet50"));
    Ok(())
}

#[test]
fn logits_are_nchw_at_the_input_resolution() -> Result<()> {
    let model = lraspp(4, json!({}))?;
    let input = wick::model::weights::synthesize("input", &[2, 3, 37, 53]);
    let logits = model.logits(&input)?;
    assert_eq!(logits.dims(), &[2, 4, 37, 53]);
    let smp = segmenter(
        json!({"architecture": "deeplabv3plus_resnet50", "task": "segmentation", "num_classes": 2}),
    )?;
    match smp.logits(&input) {
        Err(ModelError::Unsupported(message)) => assert!(message.contains("divisible by 16")),
        other => panic!(
            "expected a size error, got {:?}",
            other.map(|t| t.dims().to_vec())
        ),
    }
    Ok(())
}
