//! The channel rounding and depth scaling of the MobileNet / EfficientNet families, which
//! TensorFlow, timm and torchvision all define the same way: EfficientNet-Lite, EfficientNet
//! B0-B7 / V2 and MobileNetV3's squeeze widths are all built from these two functions.
// Based on timm 1.0 `timm/layers/helpers.py` (`make_divisible`), `_efficientnet_builder.py`
// (`round_channels`, `_scale_stage_depth` with `depth_trunc='ceil'`) and torchvision 0.29
// `_make_divisible` / `_MBConvConfig.adjust_depth` (read, not copied).

/// Channel counts are multiples of this.
const DIVISOR: usize = 8;

/// `value` rounded to the nearest multiple of 8 (at least 8), moved up one step when that
/// would lose more than 10%: `make_divisible(v, 8)` of both libraries.
pub(crate) fn make_divisible(value: f64) -> usize {
    let rounded = (((value + DIVISOR as f64 / 2.0) as usize) / DIVISOR * DIVISOR).max(DIVISOR);
    if (rounded as f64) < 0.9 * value {
        rounded + DIVISOR
    } else {
        rounded
    }
}

/// A width-scaled channel count: `channels * width_multiplier`, made divisible by 8.
pub(crate) fn round_channels(channels: usize, width_multiplier: f64) -> usize {
    make_divisible(channels as f64 * width_multiplier)
}

/// A depth-scaled block count: `ceil(repeats * depth_multiplier)`, at least one. The product
/// is an f64, as in Python, so `3 * 1.1` rounds up to 4 in both.
pub(crate) fn scale_depth(repeats: usize, depth_multiplier: f64) -> usize {
    ((repeats as f64 * depth_multiplier).ceil() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_follows_tensorflow() {
        assert_eq!(round_channels(16, 1.1), 16);
        assert_eq!(round_channels(24, 1.2), 32);
        assert_eq!(round_channels(40, 1.4), 56);
        assert_eq!(round_channels(320, 1.4), 448);
        // EfficientNet-B5's stem (32 x 1.6 = 51.2 -> 48) and B7's head (1280 x 2.0).
        assert_eq!(round_channels(32, 1.6), 48);
        assert_eq!(round_channels(1280, 2.0), 2560);
        // MobileNetV3's squeeze widths: never more than 10% below the exact value.
        assert_eq!(make_divisible(18.0), 24);
        assert_eq!(make_divisible(120.0), 120);
    }

    #[test]
    fn depth_scaling_rounds_up() {
        assert_eq!(scale_depth(1, 1.1), 2);
        assert_eq!(scale_depth(3, 1.1), 4);
        assert_eq!(scale_depth(4, 3.1), 13);
        assert_eq!(scale_depth(2, 1.0), 2);
    }
}
