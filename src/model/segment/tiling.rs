//! Running a segmentation network over an image of any size: tiles of `tile_size` pixels (the
//! last of a row or column up to 31 more) starting on a 32-pixel grid and sharing at least
//! `tile_overlap` pixels, blended with linear weights so no seam shows, streamed row band by row
//! band so memory grows with the image's width, not its area.
//!
//! Each tile is cut from the 8-bit image, padded at the bottom and right up to the network's
//! size multiple and at least [`MIN_SIDE`] ([`TilePadding`]: edge pixels repeated, or zeros
//! after normalisation as smp users pad), normalised into an NHWC tensor, run, and its logits
//! cropped back. Along each axis a tile's weight ramps from `1 / (overlap + 1)` to 1
//! over `overlap` pixels on every side that has a neighbour, so in an overlap the two tiles'
//! logits are averaged with weights that change smoothly from one to the other.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::network::SegmentationNetwork;
use crate::model::error::ModelError;

/// Where tiles read their pixels: 8-bit RGB rows, asked for top to bottom, so a source can be
/// an image in memory or one decoded as the tiles move down ([`super::streamed`]).
pub(crate) trait PixelRows {
    /// `(width, height)` in pixels.
    fn dimensions(&self) -> (usize, usize);
    /// Rows `y0 .. y0 + rows` as `rows * width * 3` bytes. Neither `y0` nor `y0 + rows` ever
    /// moves up between calls.
    fn band(&mut self, y0: usize, rows: usize) -> Result<&[u8], ModelError>;
}

/// An image already in memory.
pub(crate) struct WholeImage<'a>(pub(crate) &'a RgbImage);

impl PixelRows for WholeImage<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width() as usize, self.0.height() as usize)
    }

    fn band(&mut self, y0: usize, rows: usize) -> Result<&[u8], ModelError> {
        let row_len = self.0.width() as usize * 3;
        Ok(&self.0.as_raw()[y0 * row_len..(y0 + rows) * row_len])
    }
}

/// Smallest side a tile is padded to: tiny images would otherwise shrink below one pixel of
/// feature map in the stride-16 backbones.
pub(crate) const MIN_SIDE: usize = 32;

/// Tile origins are multiples of this: a strided network computes its feature grid from the
/// input's origin, so a tile placed off the grid (say 3 pixels right of it) sees a different
/// sampling of the image than the whole-image pass does, and its logits differ everywhere, not
/// just near its borders. 32 is the largest output stride of the supported networks.
pub(crate) const TILE_ALIGN: usize = 32;

/// The tiles along one axis as `(start, extent)`: starts `0, step, 2 * step, ...` with `step`
/// the largest multiple of [`TILE_ALIGN`] not above `tile - overlap`, the last one at the
/// aligned start closest below `len - tile` and reaching to the end (so its extent is up to
/// `TILE_ALIGN - 1` pixels over `tile`). One tile when the axis fits.
pub(crate) fn tile_spans(len: usize, tile: usize, overlap: usize) -> Vec<(usize, usize)> {
    if len <= tile {
        return vec![(0, len)];
    }
    let step = ((tile - overlap) / TILE_ALIGN * TILE_ALIGN).max(TILE_ALIGN);
    let mut starts = Vec::new();
    let mut start = 0;
    while start + tile < len {
        starts.push(start);
        start += step;
    }
    let last = (len - tile) / TILE_ALIGN * TILE_ALIGN;
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    let n = starts.len();
    starts
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, if i + 1 < n { tile } else { len - s }))
        .collect()
}

/// Blending weights of a tile of `len` pixels along one axis.
fn ramp(len: usize, overlap: usize, has_before: bool, has_after: bool) -> Vec<f32> {
    let r = (overlap + 1) as f32;
    (0..len)
        .map(|p| {
            let mut w = 1.0f32;
            if has_before {
                w = w.min((p + 1) as f32 / r);
            }
            if has_after {
                w = w.min((len - p) as f32 / r);
            }
            w
        })
        .collect()
}

/// What fills a tile from its last row and column up to the network's size multiple
/// (`segmentation.padding` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TilePadding {
    /// The tile's edge pixels repeated.
    #[default]
    Edge,
    /// Zeros after normalisation (the mean colour): what segmentation_models_pytorch's
    /// examples do to reach a multiple of 32.
    Zeros,
}

/// What [`run_tiled`] needs to know about the network input.
pub(crate) struct TileSettings {
    pub(crate) tile_size: usize,
    pub(crate) tile_overlap: usize,
    pub(crate) mean: [f32; 3],
    pub(crate) std: [f32; 3],
    pub(crate) padding: TilePadding,
}

/// Where finished rows of blended logits go: `(y, width * channels values)`, top to bottom.
pub(crate) type LogitRowSink<'a> = dyn FnMut(usize, &[f32]) -> Result<(), ModelError> + 'a;

/// Runs `network` over `image` tile by tile and hands every finished row of blended logits
/// (`width * channels` values, channels innermost) to `sink`, top to bottom. Memory: one tile
/// row of pixels (`image` decides) and of logits (`tile_h * width * (channels + 1)` floats).
pub(crate) fn run_tiled(
    network: &dyn SegmentationNetwork,
    image: &mut dyn PixelRows,
    settings: &TileSettings,
    sink: &mut LogitRowSink<'_>,
) -> Result<(), ModelError> {
    let (width, height) = image.dimensions();
    let channels = network.out_channels();
    let (tile, overlap) = (settings.tile_size, settings.tile_overlap);
    let ys = tile_spans(height, tile, overlap);
    let xs = tile_spans(width, tile, overlap);
    let tile_h = ys.iter().map(|&(_, extent)| extent).max().unwrap_or(0);
    // Rows top.. of the image still being accumulated; at most one tile high.
    let mut top = 0;
    let mut logits = vec![0.0f32; tile_h * width * channels];
    let mut weights = vec![0.0f32; tile_h * width];
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - settings.mean[c]) / settings.std[c])
    });
    for (row, &(y0, th)) in ys.iter().enumerate() {
        // Every later tile starts at y0 or below: the rows above it are final.
        flush(
            &mut logits,
            &mut weights,
            (top, y0),
            (width, channels),
            sink,
        )?;
        top = y0;
        let wy = ramp(th, overlap, row > 0, row + 1 < ys.len());
        for (col, &(x0, tw)) in xs.iter().enumerate() {
            let wx = ramp(tw, overlap, col > 0, col + 1 < xs.len());
            let band = image.band(y0, th)?;
            let out = run_tile(network, band, width, (x0, tw, th), (&lut, settings.padding))?;
            for ty in 0..th {
                let acc_row = (y0 + ty - top) * width;
                for tx in 0..tw {
                    let weight = wy[ty] * wx[tx];
                    let px = acc_row + x0 + tx;
                    weights[px] += weight;
                    let src = &out[(ty * tw + tx) * channels..][..channels];
                    let dst = &mut logits[px * channels..][..channels];
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, s)| *d = s.mul_add(weight, *d));
                }
            }
        }
    }
    flush(
        &mut logits,
        &mut weights,
        (top, height),
        (width, channels),
        sink,
    )
}

/// Emits rows `from..to` (image coordinates; the buffers start at `from`), normalised by their
/// weights, then moves the rows below them to the front of the buffers and zeroes the rest.
fn flush(
    logits: &mut [f32],
    weights: &mut [f32],
    (from, to): (usize, usize),
    (width, channels): (usize, usize),
    sink: &mut LogitRowSink<'_>,
) -> Result<(), ModelError> {
    let done = to - from;
    if done == 0 {
        return Ok(());
    }
    let row_len = width * channels;
    for r in 0..done {
        let row = &mut logits[r * row_len..][..row_len];
        for (px, &w) in row
            .chunks_exact_mut(channels)
            .zip(&weights[r * width..][..width])
        {
            // Every pixel is covered by at least one tile, whose weights are positive.
            px.iter_mut().for_each(|v| *v /= w);
        }
        sink(from + r, row)?;
    }
    logits.copy_within(done * row_len.., 0);
    let kept = logits.len() - done * row_len;
    logits[kept..].fill(0.0);
    weights.copy_within(done * width.., 0);
    let kept = weights.len() - done * width;
    weights[kept..].fill(0.0);
    Ok(())
}

/// Cuts the `tw x th` tile at column `x0` of `band` (the tile's rows, `width` pixels each),
/// pads, normalises and runs it; returns its `th * tw * channels` logits.
fn run_tile(
    network: &dyn SegmentationNetwork,
    band: &[u8],
    width: usize,
    (x0, tw, th): (usize, usize, usize),
    (lut, padding): (&[[f32; 256]; 3], TilePadding),
) -> candle_core::Result<Vec<f32>> {
    let multiple = network.size_multiple().max(1);
    let pad = |n: usize| n.max(MIN_SIDE).div_ceil(multiple) * multiple;
    let (ph, pw) = (pad(th), pad(tw));
    let mut input = Vec::with_capacity(ph * pw * 3);
    for y in 0..ph {
        let row = &band[y.min(th - 1) * width * 3..][..width * 3];
        for x in 0..pw {
            if padding == TilePadding::Zeros && (y >= th || x >= tw) {
                input.extend([0.0; 3]);
                continue;
            }
            let px = &row[(x0 + x.min(tw - 1)) * 3..][..3];
            input.extend((0..3).map(|c| lut[c][usize::from(px[c])]));
        }
    }
    let input = Tensor::from_vec(input, (1, ph, pw, 3), &Device::Cpu)?;
    let logits = network.forward(&input)?;
    let channels = network.out_channels();
    let logits = logits.narrow(1, 0, th)?.narrow(2, 0, tw)?;
    logits.flatten_all()?.to_vec1::<f32>().inspect(|v| {
        debug_assert_eq!(v.len(), th * tw * channels);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::segment::network::Decoder;

    #[test]
    fn tiles_are_aligned_cover_the_axis_and_overlap() {
        assert_eq!(tile_spans(300, 512, 128), vec![(0, 300)]);
        assert_eq!(tile_spans(512, 512, 128), vec![(0, 512)]);
        assert_eq!(
            tile_spans(1000, 512, 128),
            vec![(0, 512), (384, 512), (480, 520)]
        );
        assert_eq!(tile_spans(896, 512, 128), vec![(0, 512), (384, 512)]);
        assert_eq!(
            tile_spans(451, 192, 64),
            vec![(0, 192), (128, 192), (256, 195)]
        );
        for (len, tile, overlap) in [
            (1000, 512, 128),
            (4000, 512, 64),
            (513, 512, 0),
            (451, 192, 64),
        ] {
            let spans = tile_spans(len, tile, overlap);
            assert_eq!(spans[0].0, 0);
            let (last, extent) = *spans.last().unwrap();
            assert_eq!(last + extent, len, "the last tile reaches the end");
            assert!(extent >= tile.min(len) && extent < tile + TILE_ALIGN);
            for &(start, _) in &spans {
                assert_eq!(start % TILE_ALIGN, 0, "{start} is on the grid");
            }
            for pair in spans.windows(2) {
                let ((a, a_len), (b, _)) = (pair[0], pair[1]);
                assert!(
                    b > a && a + a_len >= b + overlap,
                    "{pair:?} overlap by {overlap}"
                );
            }
        }
    }

    /// A stand-in network whose logits at a pixel depend only on the input inside its aligned
    /// `block x block` cell (1 = the pixel alone): with no context beyond the cell, any
    /// difference between tiled and whole-image logits is the tiling's own error.
    struct CellNetwork {
        block: usize,
    }

    impl SegmentationNetwork for CellNetwork {
        fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
            let (_, h, w, _) = xs.dims4()?;
            let cells = xs
                .permute((0, 3, 1, 2))?
                .avg_pool2d(self.block)?
                .upsample_nearest2d(h, w)?
                .permute((0, 2, 3, 1))?;
            let mix = Tensor::new(
                &[[1.0f32, 0.5, -1.0], [0.2, 1.0, 0.3], [-0.7, 0.1, 1.0]],
                &Device::Cpu,
            )?;
            cells.broadcast_matmul(&mix)
        }
        fn out_channels(&self) -> usize {
            3
        }
        fn size_multiple(&self) -> usize {
            self.block
        }
        fn decoder(&self) -> Decoder {
            Decoder::FinalConv {
                key: "none",
                channels: 3,
                align_corners: false,
            }
        }
        fn frozen_features(&self, _: &Tensor) -> candle_core::Result<Vec<Tensor>> {
            candle_core::bail!("a test network has no features")
        }
    }

    fn logits(network: &CellNetwork, image: &RgbImage, tile: usize, overlap: usize) -> Vec<f32> {
        let settings = TileSettings {
            tile_size: tile,
            tile_overlap: overlap,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            padding: TilePadding::Edge,
        };
        let mut rows = Vec::new();
        let mut next = 0;
        run_tiled(network, &mut WholeImage(image), &settings, &mut |y, row| {
            assert_eq!(y, next, "rows arrive in order, once each");
            next += 1;
            rows.extend_from_slice(row);
            Ok(())
        })
        .unwrap();
        assert_eq!(next, image.height() as usize);
        rows
    }

    #[test]
    fn tiles_stitch_to_exactly_the_whole_image_pass() {
        let image = RgbImage::from_fn(451, 300, |x, y| {
            let v = |k: u32| ((x * k + y * (k + 3) + x * y / 7) % 256) as u8;
            image::Rgb([v(3), v(5), v(11)])
        });
        for block in [1, 32] {
            let network = CellNetwork { block };
            let whole = logits(&network, &image, 1024, 0);
            assert_eq!(whole.len(), 451 * 300 * 3);
            // Overlaps of 48 and 64 would place tiles at 144 and 128 pixels: only a tiling
            // on the network's 32-pixel grid sees the same cells as the whole image.
            for (tile, overlap) in [(192, 64), (192, 48), (128, 32), (256, 0)] {
                let tiled = logits(&network, &image, tile, overlap);
                let worst = whole
                    .iter()
                    .zip(&tiled)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "cells of {block} px, tiles of {tile} overlapping by {overlap}: {worst}"
                );
            }
        }
    }

    #[test]
    fn ramps_are_positive_and_flat_where_there_is_no_neighbour() {
        let w = ramp(8, 3, true, true);
        assert_eq!(w, vec![0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25]);
        assert!(ramp(8, 3, false, false).iter().all(|&w| w == 1.0));
        assert_eq!(ramp(4, 0, true, true), vec![1.0; 4]);
    }
}
