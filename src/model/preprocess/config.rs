//! The transform's parameters: [`PreprocessConfig`] (timm `pretrained_cfg` fields),
//! [`Interpolation`] and their validation, including timm's `scale_size` arithmetic.

use fast_image_resize::FilterType;
use serde::{Deserialize, Serialize};

use super::error::PreprocessError;

/// Largest accepted `input_height` / `input_width`. Generous (models take 224..1024) but keeps a
/// typo in a config from allocating gigabytes per request.
pub(crate) const MAX_INPUT_SIDE: usize = 8192;

/// The resampling filter of the resize step, named as in timm's `pretrained_cfg`
/// (`"bilinear"`, `"bicubic"`).
///
/// Both are PIL's antialiased filters (the kernel widens by the downscale factor), which is what
/// torchvision uses for PIL images. `"nearest"` (used by almost no timm model) is deliberately
/// not accepted: an unknown name fails deserialisation and [`str::parse`] with the list of
/// accepted names rather than silently falling back to another filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// PIL `BILINEAR` (triangle filter, support 1), timm's default.
    #[default]
    Bilinear,
    /// PIL `BICUBIC` (Catmull-Rom cubic, a = -0.5, support 2).
    Bicubic,
}

impl Interpolation {
    /// The `fast_image_resize` filter equal to the PIL filter of the same name.
    pub(super) fn filter(self) -> FilterType {
        match self {
            Interpolation::Bilinear => FilterType::Bilinear,
            // fast_image_resize's CatmullRom is PIL's bicubic kernel with a = -0.5.
            Interpolation::Bicubic => FilterType::CatmullRom,
        }
    }

    /// Half-width of the filter kernel at scale 1 (PIL's `support`), in pixels.
    pub(super) fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    /// The config name of this filter (`"bilinear"` or `"bicubic"`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        }
    }
}

impl std::fmt::Display for Interpolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Interpolation {
    type Err = PreprocessError;

    /// Parses `"bilinear"` or `"bicubic"` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            _ => Err(PreprocessError::InvalidConfig {
                field: "interpolation",
                value: format!("{s:?}"),
                reason: "expected \"bilinear\" or \"bicubic\"".into(),
            }),
        }
    }
}

/// How the resize step treats the aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// timm / torchvision: the shorter side to `floor(input / crop_pct)`, the other in
    /// proportion, then the centre crop.
    #[default]
    KeepAspect,
    /// Hugging Face image processors: both sides to `floor(input / crop_pct)` whatever the
    /// aspect ratio, then the centre crop (none at `crop_pct` 1).
    Squash,
}

/// Smallest accepted `crop_pct`: below it the resize target (`input / crop_pct`) is over ten
/// times the input for a crop of a tenth of it, which no model does; the bound also keeps the
/// size arithmetic far from overflow.
pub(crate) const MIN_CROP_PCT: f32 = 0.1;
/// Largest accepted `crop_pct` (above 1.0 the crop is zero-padded).
pub(crate) const MAX_CROP_PCT: f32 = 4.0;

/// ImageNet channel means (RGB), timm's `IMAGENET_DEFAULT_MEAN`.
pub(crate) const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), timm's `IMAGENET_DEFAULT_STD`.
pub(crate) const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The evaluation transform's parameters, as in a timm `pretrained_cfg`.
///
/// `Default` is timm's default: 224x224, `crop_pct` 0.875, bilinear, ImageNet mean/std.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// Model input height in pixels (`input_size[1]` in timm).
    pub(crate) input_height: usize,
    /// Model input width in pixels (`input_size[2]` in timm).
    pub(crate) input_width: usize,
    /// Fraction of the resized image the centre crop keeps: the image is first resized to
    /// `floor(input / crop_pct)`. Above 1.0 the crop is larger than the resized image and the
    /// border is zero-padded, as torchvision's `CenterCrop` does. Accepted range:
    /// [`MIN_CROP_PCT`] to [`MAX_CROP_PCT`].
    pub(crate) crop_pct: f32,
    /// Resampling filter of the resize step.
    pub(crate) interpolation: Interpolation,
    /// Per-channel (RGB) mean subtracted after scaling pixels to `[0, 1]`.
    pub(crate) mean: [f32; 3],
    /// Per-channel (RGB) standard deviation the result is divided by.
    pub(crate) std: [f32; 3],
    /// Whether the resize keeps the aspect ratio.
    #[serde(default)]
    pub(crate) resize_mode: ResizeMode,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            input_height: 224,
            input_width: 224,
            crop_pct: 0.875,
            interpolation: Interpolation::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            resize_mode: ResizeMode::KeepAspect,
        }
    }
}

impl PreprocessConfig {
    /// Number of `f32` values in one preprocessed image: `3 * input_height * input_width`.
    pub(crate) fn tensor_len(&self) -> usize {
        3 * self.input_height * self.input_width
    }

    /// Checks every field; [`preprocess`](super::preprocess) calls this too, so a loader can fail early at start-up.
    pub(crate) fn validate(&self) -> Result<(), PreprocessError> {
        for (field, value) in [
            ("input_height", self.input_height),
            ("input_width", self.input_width),
        ] {
            if value == 0 || value > MAX_INPUT_SIDE {
                return Err(PreprocessError::InvalidConfig {
                    field,
                    value: value.to_string(),
                    reason: format!("must be between 1 and {MAX_INPUT_SIDE}"),
                });
            }
        }
        if !(MIN_CROP_PCT..=MAX_CROP_PCT).contains(&self.crop_pct) {
            return Err(PreprocessError::InvalidConfig {
                field: "crop_pct",
                value: self.crop_pct.to_string(),
                reason: format!(
                    "must be between {MIN_CROP_PCT} and {MAX_CROP_PCT} (timm models use 0.8 to 1.0)"
                ),
            });
        }
        let (scale_h, scale_w) = self.scale_size();
        if scale_h == 0 || scale_w == 0 {
            return Err(PreprocessError::InvalidConfig {
                field: "crop_pct",
                value: self.crop_pct.to_string(),
                reason: format!(
                    "the resize target floor(input / crop_pct) = {scale_h}x{scale_w} has no pixels"
                ),
            });
        }
        for (c, (&m, &s)) in self.mean.iter().zip(&self.std).enumerate() {
            if !m.is_finite() {
                return Err(PreprocessError::InvalidConfig {
                    field: "mean",
                    value: format!("{:?}", self.mean),
                    reason: format!("channel {c} is not a finite number"),
                });
            }
            if !(s.is_finite() && s > 0.0) {
                return Err(PreprocessError::InvalidConfig {
                    field: "std",
                    value: format!("{:?}", self.std),
                    reason: format!("channel {c} must be a finite number above 0"),
                });
            }
        }
        Ok(())
    }

    /// timm's `scale_size`: `(floor(input_height / crop_pct), floor(input_width / crop_pct))`.
    pub(super) fn scale_size(&self) -> (u64, u64) {
        // timm does this division in Python (f64) on the decimal the config was written with.
        // Our field is f32, and e.g. 0.8f32 is slightly above 0.8, so 224 / 0.8f32 floors to
        // 279 where Python gets 280. Going through the shortest decimal that round-trips the
        // f32 ("0.8") recovers the f64 Python had.
        let crop_pct: f64 = self
            .crop_pct
            .to_string()
            .parse()
            .unwrap_or(f64::from(self.crop_pct));
        let scale = |side: usize| (side as f64 / crop_pct).floor() as u64;
        (scale(self.input_height), scale(self.input_width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_timms_default_and_valid() {
        let cfg = PreprocessConfig::default();
        assert_eq!(
            (cfg.input_height, cfg.input_width, cfg.crop_pct),
            (224, 224, 0.875)
        );
        assert_eq!(cfg.interpolation, Interpolation::Bilinear);
        assert_eq!(cfg.tensor_len(), 3 * 224 * 224);
        cfg.validate().unwrap();
    }

    #[test]
    fn scale_size_is_floor_of_input_over_crop_pct() {
        // timm scale_size = floor(input / crop_pct), with the f32 read as its decimal.
        let scale = |side: usize, crop_pct: f32| {
            PreprocessConfig {
                input_height: side,
                input_width: side,
                crop_pct,
                ..PreprocessConfig::default()
            }
            .scale_size()
            .0
        };
        assert_eq!(scale(224, 0.875), 256);
        assert_eq!(scale(224, 0.9), 248);
        assert_eq!(scale(224, 0.95), 235);
        assert_eq!(scale(224, 1.0), 224);
        assert_eq!(scale(288, 1.0), 288);
        assert_eq!(scale(384, 0.96), 400);
        // 0.8f32 is 0.800000011920929, just above 0.8: dividing by it directly would give
        // floor(279.99999583) = 279 where Python's 224 / 0.8 gives 280.0. Same for 0.85.
        assert_eq!(scale(224, 0.8), 280);
        assert_eq!(scale(238, 0.85), 280);
    }

    #[test]
    fn invalid_configs_name_the_field_and_value() {
        let check = |cfg: PreprocessConfig, needle: &str| {
            let err = cfg.validate().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
            assert!(matches!(err, PreprocessError::InvalidConfig { .. }));
        };
        let base = PreprocessConfig::default;
        check(
            PreprocessConfig {
                input_height: 0,
                ..base()
            },
            "input_height = 0",
        );
        check(
            PreprocessConfig {
                input_width: 9000,
                ..base()
            },
            "input_width = 9000: must be between 1 and 8192",
        );
        check(
            PreprocessConfig {
                crop_pct: 0.0,
                ..base()
            },
            "crop_pct = 0: must be between 0.1 and 4",
        );
        check(
            PreprocessConfig {
                crop_pct: f32::NAN,
                ..base()
            },
            "crop_pct = NaN",
        );
        check(
            PreprocessConfig {
                crop_pct: 500.0,
                ..base()
            },
            "crop_pct = 500: must be between 0.1 and 4",
        );
        check(
            PreprocessConfig {
                input_height: 1,
                crop_pct: 3.0,
                ..base()
            },
            "floor(input / crop_pct) = 0x74 has no pixels",
        );
        check(
            PreprocessConfig {
                std: [0.2, 0.0, 0.2],
                ..base()
            },
            "std = [0.2, 0.0, 0.2]: channel 1",
        );
        check(
            PreprocessConfig {
                mean: [f32::INFINITY, 0.0, 0.0],
                ..base()
            },
            "mean = [inf",
        );
    }

    #[test]
    fn interpolation_names() {
        let parse = |s: &str| serde_json::from_str::<Interpolation>(s);
        assert_eq!(parse("\"bilinear\"").unwrap(), Interpolation::Bilinear);
        assert_eq!(parse("\"bicubic\"").unwrap(), Interpolation::Bicubic);
        let err = parse("\"nearest\"").unwrap_err().to_string();
        assert!(err.contains("bilinear") && err.contains("bicubic"), "{err}");
        assert_eq!(
            serde_json::to_string(&Interpolation::Bicubic).unwrap(),
            "\"bicubic\""
        );
        assert_eq!(
            "BICUBIC".parse::<Interpolation>().unwrap(),
            Interpolation::Bicubic
        );
        let err = "lanczos".parse::<Interpolation>().unwrap_err().to_string();
        assert!(err.contains("interpolation = \"lanczos\""), "{err}");

        let cfg: PreprocessConfig = serde_json::from_str(
            r#"{"input_height": 256, "input_width": 320, "crop_pct": 0.95,
                "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#,
        )
        .unwrap();
        assert_eq!((cfg.input_height, cfg.input_width), (256, 320));
        assert_eq!(cfg.interpolation, Interpolation::Bicubic);
    }
}
