//! Image preprocessing: request bytes → decoded RGB image → the timm / torchvision evaluation
//! transform → a normalised CHW `f32` tensor, exactly as timm's `transforms_imagenet_eval`
//! (crop mode "center") prepares it for PyTorch.
//!
//! This file owns the transform ([`preprocess`], [`to_batch`]) and the public surface; the
//! submodules own decoding ([`decode`], [`DecodeLimits`]: `preprocess/decode.rs`), the
//! parameters ([`PreprocessConfig`], [`Interpolation`]: `preprocess/config.rs`) and the error
//! type ([`PreprocessError`]: `preprocess/error.rs`). Everything is re-exported here, so callers
//! need one import path.
//!
//! The reference pipeline is PIL → `Resize(floor(size / crop_pct))` (shorter side; the longer
//! side becomes `int(scale * long / short)`) → `CenterCrop(size)` → `ToTensor` → `Normalize`.
//! We never materialise the resized image: `fast_image_resize` resamples only the source region
//! that the centre crop keeps, given as a fractional box in source coordinates. The scale factor
//! is the same as PIL's, so the antialiasing filter's support (and therefore every filter tap)
//! matches; only the fixed-point rounding inside the separable passes can differ, by one level
//! out of 255 on a fraction of a percent of the values.

pub mod config;
pub mod decode;
pub mod error;
mod jpeg;
pub(crate) mod rows;

use candle_core::{Device, Tensor};
use fast_image_resize::{self as fr, ResizeAlg, ResizeOptions};
use image::RgbImage;

pub use config::{Interpolation, PreprocessConfig, ResizeMode};
pub use decode::{decode, DecodeLimits};
pub use error::PreprocessError;

/// Whether the JPEG decoder was built with its SIMD code (see `preprocess/jpeg.rs`): `wick
/// serve` warns at start and `wick bench` says so when it was not.
pub fn jpeg_decoder_has_simd() -> bool {
    jpeg::has_simd()
}

/// How one output axis is filled: output pixels `dst_start .. dst_start + dst_len` come from
/// the source interval `src_start .. src_start + src_len` (fractional source pixels); the rest
/// of the axis is padding.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AxisPlan {
    src_start: f64,
    src_len: f64,
    dst_start: usize,
    dst_len: usize,
}

/// The size `(height, width)` the reference pipeline resizes a `width x height` image to.
fn resized_size(width: u32, height: u32, scale_size: (u64, u64)) -> (u64, u64) {
    let (w, h) = (u64::from(width), u64::from(height));
    let (scale_h, scale_w) = scale_size;
    if scale_h == scale_w {
        // torchvision `Resize(int)`: the shorter side becomes `s`, the longer
        // `int(s * long / short)` (Python true division, then truncation).
        let s = scale_h;
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let new_long = ((s * long) as f64 / short as f64) as u64;
        if w <= h {
            (new_long, s)
        } else {
            (s, new_long)
        }
    } else {
        // Non-square target: timm uses `ResizeKeepRatio(scale_size)` (longest = 0): divide by
        // the smaller of the two side ratios, then Python `round` (half to even) each side.
        // (timm constructs it without passing `interpolation`, so timm itself resizes these
        // with bilinear whatever the config says; we honour the configured filter.)
        let ratio = (h as f64 / scale_h as f64).min(w as f64 / scale_w as f64);
        (
            (h as f64 / ratio).round_ties_even() as u64,
            (w as f64 / ratio).round_ties_even() as u64,
        )
    }
}

/// Plans one axis of `CenterCrop(crop)` applied to the source resized from `src` to `resized`.
fn plan_axis(src: u32, resized: u64, crop: usize) -> AxisPlan {
    let crop_u = crop as u64;
    if crop_u <= resized {
        // torchvision: `int(round((resized - crop) / 2.0))`, Python's half-to-even round.
        let offset = ((resized - crop_u) as f64 / 2.0).round_ties_even();
        // Resized pixel i covers source [i * s, (i + 1) * s) with s = src / resized; the kept
        // window therefore starts at offset * s and spans crop * s. Dividing last keeps the
        // common integer cases exact.
        let src_f = f64::from(src);
        let src_start = offset * src_f / resized as f64;
        let src_len = (crop as f64 * src_f / resized as f64).min(src_f - src_start);
        AxisPlan {
            src_start,
            src_len,
            dst_start: 0,
            dst_len: crop,
        }
    } else {
        // The crop is larger than the resized image: torchvision pads (crop - resized) // 2
        // before and the rest after, with zeros, and keeps the whole resized image.
        let resized = resized as usize;
        AxisPlan {
            src_start: 0.0,
            src_len: f64::from(src),
            dst_start: (crop - resized) / 2,
            dst_len: resized,
        }
    }
}

/// Resamples the source window of `rows` x `cols` to `cols.dst_len x rows.dst_len` pixels.
///
/// PIL resamples horizontally first (only the rows the vertical filter will read), rounds to
/// u8, then vertically; fast_image_resize does the opposite order for u8 images when asked for
/// both at once. Two calls with one pass each reproduce PIL's order and its intermediate
/// rounding, which makes more output levels bit-identical to torchvision's.
fn resample(
    img: &RgbImage,
    rows: &AxisPlan,
    cols: &AxisPlan,
    interpolation: Interpolation,
) -> Result<fr::images::Image<'static>, PreprocessError> {
    let alg = ResizeAlg::Convolution(interpolation.filter());
    let mut resizer = fr::Resizer::new();
    // Source rows the vertical pass can touch: its window plus the filter radius.
    let radius = interpolation.support() * (rows.src_len / rows.dst_len as f64).max(1.0);
    let height = f64::from(img.height());
    let first = (rows.src_start - radius).floor().max(0.0);
    let last = (rows.src_start + rows.src_len + radius).ceil().min(height);
    let band_rows = (last - first) as u32;
    let mut band = fr::images::Image::new(cols.dst_len as u32, band_rows, fr::PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(alg)
        .crop(cols.src_start, first, cols.src_len, f64::from(band_rows))
        .use_alpha(false);
    resizer.resize(img, &mut band, &options)?;
    let mut region = fr::images::Image::new(
        cols.dst_len as u32,
        rows.dst_len as u32,
        fr::PixelType::U8x3,
    );
    let top = rows.src_start - first;
    // `min` guards against the sum rounding one ulp past the band's last row.
    let len = rows.src_len.min(f64::from(band_rows) - top);
    let options = ResizeOptions::new()
        .resize_alg(alg)
        .crop(0.0, top, cols.dst_len as f64, len)
        .use_alpha(false);
    resizer.resize(&band, &mut region, &options)?;
    Ok(region)
}

/// Runs the evaluation transform on one RGB image: resize so the shorter side is
/// `floor(input / crop_pct)` (keeping the aspect ratio; both sides with
/// [`ResizeMode::Squash`]), centre-crop `input_height x input_width`, scale to
/// `[0, 1]` and normalise with `mean` / `std`.
///
/// Returns `3 * input_height * input_width` values in CHW order (channel-major, then rows, then
/// columns), ready for [`to_batch`].
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<f32>, PreprocessError> {
    cfg.validate()?;
    let (width, height) = img.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::NoPixels { width, height });
    }
    let (out_h, out_w) = (cfg.input_height, cfg.input_width);
    let (resized_h, resized_w) = match cfg.resize_mode {
        ResizeMode::KeepAspect => resized_size(width, height, cfg.scale_size()),
        ResizeMode::Squash => cfg.scale_size(),
    };
    let rows = plan_axis(height, resized_h, out_h);
    let cols = plan_axis(width, resized_w, out_w);

    let region = resample(img, &rows, &cols, cfg.interpolation)?;

    // ToTensor then Normalize, in f32 and in torchvision's order ((v / 255 - mean) / std), via
    // a 256-entry table per channel: bit-identical to PyTorch for equal u8 inputs.
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - cfg.mean[c]) / cfg.std[c])
    });
    let plane = out_h * out_w;
    let mut out = vec![0.0f32; 3 * plane];
    if rows.dst_len < out_h || cols.dst_len < out_w {
        // Padding is a zero pixel before normalisation.
        for (c, chunk) in out.chunks_exact_mut(plane).enumerate() {
            chunk.fill(lut[c][0]);
        }
    }
    let (r_plane, rest) = out.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    let src_row_len = cols.dst_len * 3;
    for (y, src_row) in region
        .buffer()
        .chunks_exact(src_row_len)
        .enumerate()
        .take(rows.dst_len)
    {
        let start = (rows.dst_start + y) * out_w + cols.dst_start;
        let range = start..start + cols.dst_len;
        let dst = r_plane[range.clone()]
            .iter_mut()
            .zip(&mut g_plane[range.clone()])
            .zip(&mut b_plane[range]);
        for (((r, g), b), px) in dst.zip(src_row.chunks_exact(3)) {
            *r = lut[0][usize::from(px[0])];
            *g = lut[1][usize::from(px[1])];
            *b = lut[2][usize::from(px[2])];
        }
    }
    Ok(out)
}

/// Stacks preprocessed images into one `(batch, 3, input_height, input_width)` `f32` tensor on
/// the CPU.
///
/// Fails if `images` is empty or any element is not `3 * input_height * input_width` long.
pub fn to_batch<T: AsRef<[f32]>>(
    images: &[T],
    cfg: &PreprocessConfig,
) -> candle_core::Result<Tensor> {
    let len = cfg.tensor_len();
    if images.is_empty() {
        candle_core::bail!("to_batch: the batch is empty (need at least 1 image)");
    }
    let mut data = Vec::with_capacity(len * images.len());
    for (i, image) in images.iter().enumerate() {
        let image = image.as_ref();
        if image.len() != len {
            candle_core::bail!(
                "to_batch: image {i} has {} values; input_height x input_width = {}x{} needs 3*{}*{} = {len}",
                image.len(),
                cfg.input_height,
                cfg.input_width,
                cfg.input_height,
                cfg.input_width
            );
        }
        data.extend_from_slice(image);
    }
    Tensor::from_vec(
        data,
        (images.len(), 3, cfg.input_height, cfg.input_width),
        &Device::Cpu,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;
    use image::Rgb;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
    }

    /// Reads a little-endian float32 `.npy` file (format 1.0-3.0, C order): (shape, values).
    fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
        assert_eq!(&bytes[..6], b"\x93NUMPY", "not an .npy file");
        let (header_len, header_start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 => (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            ),
            v => panic!("unknown .npy version {v}"),
        };
        let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).unwrap();
        assert!(header.contains("'descr': '<f4'"), "{header}");
        assert!(header.contains("'fortran_order': False"), "{header}");
        let shape_start = header.find("'shape': (").unwrap() + "'shape': (".len();
        let shape_end = shape_start + header[shape_start..].find(')').unwrap();
        let shape: Vec<usize> = header[shape_start..shape_end]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let data: Vec<f32> = bytes[header_start + header_len..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(data.len(), shape.iter().product::<usize>());
        (shape, data)
    }

    /// What one normalised value is for pixel level `v` in channel `c` of `cfg`.
    fn level(cfg: &PreprocessConfig, c: usize, v: u8) -> f32 {
        (f32::from(v) / 255.0 - cfg.mean[c]) / cfg.std[c]
    }

    /// Value at channel `c`, row `y`, column `x` of a CHW output.
    fn at(out: &[f32], cfg: &PreprocessConfig, c: usize, y: usize, x: usize) -> f32 {
        out[(c * cfg.input_height + y) * cfg.input_width + x]
    }

    /// Asserts the pixel at (y, x) of a CHW output is the colour `rgb` (within `tol` levels).
    fn assert_colour(out: &[f32], cfg: &PreprocessConfig, y: usize, x: usize, rgb: [u8; 3]) {
        for (c, &v) in rgb.iter().enumerate() {
            let got = at(out, cfg, c, y, x);
            let levels = (got - level(cfg, c, v)).abs() * cfg.std[c] * 255.0;
            assert!(
                levels <= 1.01,
                "pixel (y {y}, x {x}) channel {c}: {got} is {levels} levels from {v}"
            );
        }
    }

    #[test]
    fn matches_the_pytorch_reference_tensor() {
        let bytes = std::fs::read(fixtures().join("chelsea.png")).unwrap();
        let img = decode(&bytes, &DecodeLimits::default()).unwrap();
        let cfg = PreprocessConfig::default();
        let ours = preprocess(&img, &cfg).unwrap();
        let (shape, reference) = read_npy_f32(&fixtures().join("chelsea_input_224.npy"));
        assert_eq!(shape, [1, 3, 224, 224]);
        assert_eq!(ours.len(), reference.len());

        let diffs: Vec<f32> = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let exact = diffs.iter().filter(|&&d| d == 0.0).count() as f32 / diffs.len() as f32;
        // The same u8 level gives a bit-identical value (same f32 operations as torchvision);
        // a difference is a whole number of levels, 1/255/std = 0.0171..0.0175 each.
        let max_levels = diffs
            .chunks_exact(224 * 224)
            .zip(cfg.std)
            .map(|(plane, s)| plane.iter().copied().fold(0.0f32, f32::max) * s * 255.0)
            .fold(0.0f32, f32::max);
        println!(
            "chelsea.png vs chelsea_input_224.npy: max |diff| {max:.5} ({max_levels:.2} levels), \
             mean |diff| {mean:.6}, bit-identical {:.2}%",
            100.0 * exact
        );
        assert!(max <= 0.05, "max |diff| {max}");
        assert!(mean <= 0.005, "mean |diff| {mean}");
    }

    #[test]
    fn identity_when_no_resize_is_needed() {
        // 224x224 input, crop_pct 1.0: resize and crop are both no-ops, so every value is the
        // exact torchvision value of its pixel.
        let img = RgbImage::from_fn(224, 224, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let cfg = PreprocessConfig {
            crop_pct: 1.0,
            ..PreprocessConfig::default()
        };
        let out = preprocess(&img, &cfg).unwrap();
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                assert_eq!(
                    at(&out, &cfg, c, y as usize, x as usize),
                    level(&cfg, c, p.0[c])
                );
            }
        }
    }

    #[test]
    fn resize_sizes_follow_torchvision_and_timm() {
        let cfg = PreprocessConfig::default();
        assert_eq!(cfg.scale_size(), (256, 256));
        // torchvision Resize(256): shorter side 256, longer int(256 * long / short).
        assert_eq!(resized_size(451, 300, (256, 256)), (256, 384)); // 384.85 -> 384
        assert_eq!(resized_size(300, 451, (256, 256)), (384, 256));
        assert_eq!(resized_size(1920, 1080, (256, 256)), (256, 455)); // 455.1 -> 455
        assert_eq!(resized_size(100, 100, (256, 256)), (256, 256));
        // Non-square target: timm ResizeKeepRatio, Python round (half to even).
        assert_eq!(resized_size(400, 400, (64, 128)), (128, 128));
        assert_eq!(resized_size(600, 200, (64, 128)), (64, 192));
        // 10 x 7 into (4, 5): ratio = min(7/4, 10/5) = 1.75 -> (4, round(5.714)) = (4, 6).
        assert_eq!(resized_size(10, 7, (4, 5)), (4, 6));
        // 5 x 2 into (4, 9): ratio = min(0.5, 0.555) = 0.5 -> (4, 10); 3 x 2 -> 6 (exact).
        assert_eq!(resized_size(5, 2, (4, 9)), (4, 10));
    }

    #[test]
    fn centre_crop_offsets_round_half_to_even() {
        // (385 - 224) / 2 = 80.5 -> 80; (387 - 224) / 2 = 81.5 -> 82 (Python round).
        let plan = plan_axis(385, 385, 224);
        assert_eq!((plan.src_start, plan.src_len), (80.0, 224.0));
        let plan = plan_axis(387, 387, 224);
        assert_eq!((plan.src_start, plan.src_len), (82.0, 224.0));
        // Chelsea: 451 wide, resized to 384; crop offset 80 resized pixels = 80 * 451/384.
        let plan = plan_axis(451, 384, 224);
        assert!((plan.src_start - 80.0 * 451.0 / 384.0).abs() < 1e-12);
        assert!((plan.src_len - 224.0 * 451.0 / 384.0).abs() < 1e-12);
        assert_eq!((plan.dst_start, plan.dst_len), (0, 224));
        // Crop larger than the image: pad (crop - resized) // 2 before.
        let plan = plan_axis(100, 25, 50);
        assert_eq!((plan.src_start, plan.src_len), (0.0, 100.0));
        assert_eq!((plan.dst_start, plan.dst_len), (12, 25));
    }

    const RED: [u8; 3] = [255, 0, 0];
    const GREEN: [u8; 3] = [0, 255, 0];
    const BLUE: [u8; 3] = [0, 0, 255];
    const WHITE: [u8; 3] = [255, 255, 255];

    #[test]
    fn wide_image_keeps_left_and_right() {
        // 300x200, left half red, right half blue. Resize to 150x100 (shorter side 100), crop
        // the centre 100x100 = resized columns 25..125: the colour edge (resized column 75)
        // lands at output column 50.
        let img = RgbImage::from_fn(300, 200, |x, _| Rgb(if x < 150 { RED } else { BLUE }));
        let cfg = PreprocessConfig {
            input_height: 100,
            input_width: 100,
            crop_pct: 1.0,
            ..PreprocessConfig::default()
        };
        let out = preprocess(&img, &cfg).unwrap();
        for y in [0, 50, 99] {
            for x in [0, 25, 48] {
                assert_colour(&out, &cfg, y, x, RED);
            }
            for x in [51, 75, 99] {
                assert_colour(&out, &cfg, y, x, BLUE);
            }
        }
    }

    #[test]
    fn tall_image_keeps_top_and_bottom() {
        // 200x300, top half green, bottom half white: the edge lands at output row 50.
        let img = RgbImage::from_fn(200, 300, |_, y| Rgb(if y < 150 { GREEN } else { WHITE }));
        let cfg = PreprocessConfig {
            input_height: 100,
            input_width: 100,
            crop_pct: 1.0,
            ..PreprocessConfig::default()
        };
        let out = preprocess(&img, &cfg).unwrap();
        for x in [0, 50, 99] {
            for y in [0, 25, 48] {
                assert_colour(&out, &cfg, y, x, GREEN);
            }
            for y in [51, 75, 99] {
                assert_colour(&out, &cfg, y, x, WHITE);
            }
        }
    }

    #[test]
    fn non_square_target_size() {
        // 400x400 quadrants (TL red, TR green, BL blue, BR white) into 64 rows x 128 columns,
        // crop_pct 1.0: ResizeKeepRatio gives 128x128, the centre crop keeps rows 32..96, so
        // the horizontal edge lands at output row 32 and the vertical one at column 64.
        let img = RgbImage::from_fn(400, 400, |x, y| {
            Rgb(match (x < 200, y < 200) {
                (true, true) => RED,
                (false, true) => GREEN,
                (true, false) => BLUE,
                (false, false) => WHITE,
            })
        });
        let cfg = PreprocessConfig {
            input_height: 64,
            input_width: 128,
            crop_pct: 1.0,
            ..PreprocessConfig::default()
        };
        let out = preprocess(&img, &cfg).unwrap();
        assert_eq!(out.len(), 3 * 64 * 128);
        for (y, x, colour) in [
            (0, 0, RED),
            (30, 62, RED),
            (0, 127, GREEN),
            (30, 66, GREEN),
            (63, 0, BLUE),
            (34, 62, BLUE),
            (63, 127, WHITE),
            (34, 66, WHITE),
        ] {
            assert_colour(&out, &cfg, y, x, colour);
        }
        // Through the batch tensor: (1, 3, 64, 128), indexed (batch, channel, row, column).
        let batch = to_batch(std::slice::from_ref(&out), &cfg).unwrap();
        assert_eq!(batch.dims(), &[1, 3, 64, 128]);
        let green_top_right = batch.i((0, 1, 0, 127)).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(green_top_right, at(&out, &cfg, 1, 0, 127));
        assert!((green_top_right - level(&cfg, 1, 255)).abs() < 0.02);
        let red_in_blue = batch.i((0, 0, 63, 0)).unwrap().to_scalar::<f32>().unwrap();
        assert!((red_in_blue - level(&cfg, 0, 0)).abs() < 0.02);

        // The transposed target (128 rows x 64 columns) on the transposed image.
        let cfg_t = PreprocessConfig {
            input_height: 128,
            input_width: 64,
            ..cfg
        };
        let img_t = image::imageops::rotate90(&img); // TL blue, TR red, BL white, BR green
        let out = preprocess(&img_t, &cfg_t).unwrap();
        for (y, x, colour) in [
            (0, 0, BLUE),
            (0, 63, RED),
            (127, 0, WHITE),
            (127, 63, GREEN),
        ] {
            assert_colour(&out, &cfg_t, y, x, colour);
        }
    }

    #[test]
    fn crop_pct_above_one_pads_with_zero_pixels() {
        // crop_pct 2.0 on a 50x50 input: resize to 25x25, centre it in the 50x50 crop with
        // 12 padding pixels before and 13 after; the padding is a black (0) pixel.
        let grey = [128, 128, 128];
        let img = RgbImage::from_pixel(100, 100, Rgb(grey));
        let cfg = PreprocessConfig {
            input_height: 50,
            input_width: 50,
            crop_pct: 2.0,
            ..PreprocessConfig::default()
        };
        let out = preprocess(&img, &cfg).unwrap();
        for (y, x) in [(0, 0), (11, 30), (30, 11), (37, 37), (49, 49), (30, 37)] {
            assert_colour(&out, &cfg, y, x, [0, 0, 0]);
        }
        for (y, x) in [(12, 12), (24, 24), (36, 36), (12, 36)] {
            assert_colour(&out, &cfg, y, x, grey);
        }
    }

    #[test]
    fn both_filters_keep_flat_colours_exact() {
        let img = RgbImage::from_pixel(333, 217, Rgb([10, 200, 99]));
        for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
            let cfg = PreprocessConfig {
                interpolation,
                ..PreprocessConfig::default()
            };
            let out = preprocess(&img, &cfg).unwrap();
            for c in 0..3 {
                let want = level(&cfg, c, [10, 200, 99][c]);
                let plane = &out[c * 224 * 224..(c + 1) * 224 * 224];
                assert!(
                    plane.iter().all(|&v| v == want),
                    "{interpolation} channel {c}"
                );
            }
        }
    }

    #[test]
    fn bicubic_differs_from_bilinear_on_a_photo() {
        let bytes = std::fs::read(fixtures().join("chelsea.png")).unwrap();
        let img = decode(&bytes, &DecodeLimits::default()).unwrap();
        let bilinear = preprocess(&img, &PreprocessConfig::default()).unwrap();
        let cfg = PreprocessConfig {
            interpolation: Interpolation::Bicubic,
            ..PreprocessConfig::default()
        };
        let bicubic = preprocess(&img, &cfg).unwrap();
        let mean = bilinear
            .iter()
            .zip(&bicubic)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / bilinear.len() as f32;
        // Sharper, so different, but the same picture in the same place.
        assert!(
            mean > 1e-3 && mean < 0.1,
            "mean |bilinear - bicubic| = {mean}"
        );
    }

    #[test]
    fn tiny_and_extreme_images() {
        let cfg = PreprocessConfig::default();
        for (w, h) in [(1, 1), (1, 5000), (5000, 1), (2, 3), (224, 1)] {
            let img = RgbImage::from_pixel(w, h, Rgb([7, 8, 9]));
            let out = preprocess(&img, &cfg).unwrap();
            assert_eq!(out.len(), cfg.tensor_len(), "{w}x{h}");
            assert!(out.iter().all(|v| v.is_finite()), "{w}x{h}");
            assert_colour(&out, &cfg, 112, 112, [7, 8, 9]);
        }
        let err = preprocess(&RgbImage::new(0, 10), &cfg).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::NoPixels {
                    width: 0,
                    height: 10
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn batches_stack_in_order() {
        let cfg = PreprocessConfig {
            input_height: 2,
            input_width: 3,
            ..PreprocessConfig::default()
        };
        let a: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let b: Vec<f32> = (100..118).map(|v| v as f32).collect();
        let batch = to_batch(&[a, b.clone()], &cfg).unwrap();
        assert_eq!(batch.dims(), &[2, 3, 2, 3]);
        // Image 1, channel 2, row 1, column 0 = b[(2 * 2 + 1) * 3 + 0] = 115.
        let v = batch.i((1, 2, 1, 0)).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(v, 115.0);

        let err = to_batch(&[b[..17].to_vec()], &cfg).unwrap_err().to_string();
        assert!(
            err.contains("image 0 has 17 values") && err.contains("= 18"),
            "{err}"
        );
        assert!(to_batch::<Vec<f32>>(&[], &cfg)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
