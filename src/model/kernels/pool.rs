//! Pooling on NHWC slices: max pooling with implicit -inf padding, DenseNet's 2x2 average
//! pooling, and global average pooling to one feature vector per image.

use rayon::prelude::*;

use std::sync::OnceLock;

use super::{team, ConvGeometry, Nhwc};

/// Max pooling into a contiguous `(n, out_h, out_w, c)` output. Padding never wins the max,
/// as in PyTorch's `MaxPool2d`.
pub fn max_pool(input: &[f32], shape: Nhwc, geometry: &ConvGeometry, out: &mut [f32]) {
    let Some(res) = geometry.resolve(shape.h, shape.w) else {
        return;
    };
    let c = shape.c;
    let (kh, kw) = geometry.kernel;
    let (sh, sw) = geometry.stride;
    let row_len = res.out_w * c;
    if row_len == 0 {
        return;
    }
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / res.out_h, row % res.out_h);
            for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
                acc.fill(f32::NEG_INFINITY);
                for ky in 0..kh {
                    let iy = (oy * sh + ky) as isize - res.pad_top as isize;
                    if iy < 0 || iy as usize >= shape.h {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * sw + kx) as isize - res.pad_left as isize;
                        if ix < 0 || ix as usize >= shape.w {
                            continue;
                        }
                        let src = &input
                            [((n * shape.h + iy as usize) * shape.w + ix as usize) * c..][..c];
                        acc.iter_mut().zip(src).for_each(|(a, &x)| *a = a.max(x));
                    }
                }
            }
        });
}

/// `AvgPool2d(kernel_size=2, stride=2)`: each output pixel is the mean of a 2x2 block; an odd
/// last row or column is dropped, as PyTorch's floor mode does.
pub fn avg_pool_2x2(input: &[f32], shape: Nhwc, out: &mut [f32]) {
    let (out_h, out_w, c) = (shape.h / 2, shape.w / 2, shape.c);
    let row_len = out_w * c;
    if row_len == 0 {
        return;
    }
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / out_h, row % out_h);
            let line = |dy: usize| (n * shape.h + 2 * oy + dy) * shape.w;
            for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
                let taps = [
                    (line(0) + 2 * ox) * c,
                    (line(0) + 2 * ox + 1) * c,
                    (line(1) + 2 * ox) * c,
                    (line(1) + 2 * ox + 1) * c,
                ];
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = 0.25
                        * (input[taps[0] + i]
                            + input[taps[1] + i]
                            + input[taps[2] + i]
                            + input[taps[3] + i]);
                }
            }
        });
}

/// Mean over all pixels of each image: `(n, h, w, c)` -> `(n, c)`.
///
/// Row ranges are summed on the [`team`](super::team), each range on the core whose layer
/// wrote it: squeeze-excitation pools every block's depthwise map (EfficientNet-B0: 56x56x144
/// and larger), and one core walking the whole map read half of it from the other core.
pub fn global_avg_pool(input: &[f32], shape: Nhwc) -> Vec<f32> {
    let c = shape.c;
    let plane = shape.h * shape.w;
    let mut out = vec![0.0f32; shape.n * c];
    if plane == 0 || c == 0 {
        return out;
    }
    // Small maps are summed where they are: a hand-over costs more than the reads.
    let splits = if plane * c < 1 << 15 {
        1
    } else {
        (2 * team::threads()).div_ceil(shape.n).clamp(1, shape.h)
    };
    let partial: Vec<OnceLock<Vec<f64>>> = (0..shape.n * splits).map(|_| OnceLock::new()).collect();
    team::parallel_for(partial.len(), |part| {
        let (n, split) = (part / splits, part % splits);
        let rows = team::span(split, splits, shape.h);
        let pixels =
            &input[(n * shape.h + rows.0) * shape.w * c..][..(rows.1 - rows.0) * shape.w * c];
        // Sums in f64: 7x7 or larger planes of large activations lose digits in f32.
        let mut sums = vec![0.0f64; c];
        for px in pixels.chunks_exact(c) {
            sums.iter_mut()
                .zip(px)
                .for_each(|(s, &x)| *s += f64::from(x));
        }
        partial[part].get_or_init(|| sums);
    });
    for (n, acc) in out.chunks_exact_mut(c).enumerate() {
        for (ch, a) in acc.iter_mut().enumerate() {
            let sum: f64 = partial[n * splits..(n + 1) * splits]
                .iter()
                .map(|sums| sums.get().map_or(0.0, |s| s[ch]))
                .sum();
            *a = (sum / plane as f64) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_ignores_padding_and_picks_the_window_maximum() {
        // One channel, 3x3 input, 3x3 window, stride 2, padding 1 -> 2x2 output.
        let input = vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0];
        let shape = Nhwc {
            n: 1,
            h: 3,
            w: 3,
            c: 1,
        };
        let mut out = vec![0.0; 4];
        max_pool(&input, shape, &ConvGeometry::square(3, 2, 1), &mut out);
        assert_eq!(out, vec![-1.0, -2.0, -4.0, -5.0]);
    }

    #[test]
    fn avg_pool_and_global_pool_average_per_channel() {
        // 2 channels, 2x3 image: the odd column is dropped by the 2x2 pool.
        let input = vec![
            1.0, 10.0, 2.0, 20.0, 100.0, 100.0, 3.0, 30.0, 4.0, 40.0, 100.0, 100.0,
        ];
        let shape = Nhwc {
            n: 1,
            h: 2,
            w: 3,
            c: 2,
        };
        let mut out = vec![0.0; 2];
        avg_pool_2x2(&input, shape, &mut out);
        assert_eq!(out, vec![2.5, 25.0]);
        let pooled = global_avg_pool(&input, shape);
        assert_eq!(pooled, vec![35.0, 50.0]);
    }

    #[test]
    fn global_pool_of_a_map_split_across_the_team_is_each_images_channel_mean() {
        // Two images of 57x31x24 (above the split threshold, rows not a multiple of the
        // split): channel ch of image n holds n * 1000 + ch + row / 100.
        let shape = Nhwc {
            n: 2,
            h: 57,
            w: 31,
            c: 24,
        };
        let mut input = Vec::with_capacity(shape.len());
        for n in 0..shape.n {
            for row in 0..shape.h {
                for _ in 0..shape.w {
                    input
                        .extend((0..shape.c).map(|ch| (n * 1000 + ch) as f32 + row as f32 / 100.0));
                }
            }
        }
        let pooled = global_avg_pool(&input, shape);
        let mean_row = (shape.h - 1) as f32 / 2.0 / 100.0;
        for n in 0..shape.n {
            for ch in 0..shape.c {
                let want = (n * 1000 + ch) as f32 + mean_row;
                let got = pooled[n * shape.c + ch];
                assert!(
                    (got - want).abs() < 1e-4,
                    "image {n} channel {ch}: {got} vs {want}"
                );
            }
        }
    }
}
