//! OpenCV's `cv2.resize(img, (w, h), interpolation=INTER_LINEAR)` on 8-bit RGB, bit for bit:
//! the resize inside ultralytics' `LetterBox`, so a detector sees the pixels it was trained and
//! validated on.
//!
//! Based on OpenCV's `imgproc/src/resize.cpp` (read, not copied). Its 8-bit bilinear path is
//! fixed point: each axis has half-pixel-centred source coordinates computed in `f32`, weights
//! rounded to 11 bits (`INTER_RESIZE_COEF_BITS`), a horizontal pass into `i32` rows, then a
//! vertical pass that drops 4 bits of each row before a 16-bit multiply-high, which is why a
//! float bilinear blend (even correctly rounded) lands one level off on many pixels. The exact
//! 2x shrink that OpenCV routes to `INTER_AREA` gives the same bytes through this path (equal
//! weights make both the rounded mean of four pixels). Checked against opencv-python 5.1
//! (`tests/fixtures/pixels/letterbox.json`).

/// `INTER_RESIZE_COEF_BITS`: interpolation weights are integers out of `1 << 11`.
const COEF_ONE: f32 = 2048.0;

/// One output column's source: byte offsets of its two RGB pixels in a row, and their weights.
#[derive(Debug, Clone, Copy)]
struct ColumnTap {
    left: usize,
    right: usize,
    w_left: i32,
    w_right: i32,
}

/// One output row's source rows and their weights.
#[derive(Debug, Clone, Copy)]
struct RowTap {
    top: usize,
    bottom: usize,
    w_top: i32,
    w_bottom: i32,
}

/// OpenCV's source coordinate of output index `dst` along an axis scaled by `scale`, split
/// into its integer floor and `f32` fraction as `resizeGeneric_` computes them.
fn source_coordinate(dst: usize, scale: f64) -> (i64, f32) {
    let f = ((dst as f64 + 0.5) * scale - 0.5) as f32;
    let floor = f.floor();
    (floor as i64, f - floor)
}

/// A weight as OpenCV's `saturate_cast<short>(float)`: rounded to nearest, ties to even.
fn coefficient(weight: f32) -> i32 {
    (weight * COEF_ONE).round_ties_even() as i32
}

/// OpenCV's scale: the inverse of the output/input ratio, in `f64` (not input/output, which
/// can differ in the last bit).
fn axis_scale(src: usize, dst: usize) -> f64 {
    1.0 / (dst as f64 / src as f64)
}

/// Column taps. Coordinates left of the first or right of the last source pixel take that
/// pixel whole (OpenCV zeroes the fraction there, along x only).
fn column_taps(src_w: usize, dst_w: usize) -> Vec<ColumnTap> {
    let scale = axis_scale(src_w, dst_w);
    let last = src_w as i64 - 1;
    (0..dst_w)
        .map(|dx| {
            let (mut sx, mut fx) = source_coordinate(dx, scale);
            if sx < 0 {
                (sx, fx) = (0, 0.0);
            }
            if sx >= last {
                (sx, fx) = (last, 0.0);
            }
            let left = sx as usize;
            let right = if fx == 0.0 { left } else { left + 1 };
            ColumnTap {
                left: left * 3,
                right: right * 3,
                w_left: coefficient(1.0 - fx),
                w_right: coefficient(fx),
            }
        })
        .collect()
}

/// Row taps. Unlike columns, OpenCV keeps the fraction at the borders and clamps the row
/// indices instead, so a border row blends a row with itself (not always to the same value,
/// because of the vertical pass's truncations).
fn row_taps(src_h: usize, dst_h: usize) -> Vec<RowTap> {
    let scale = axis_scale(src_h, dst_h);
    let last = src_h as i64 - 1;
    (0..dst_h)
        .map(|dy| {
            let (sy, fy) = source_coordinate(dy, scale);
            RowTap {
                top: sy.clamp(0, last) as usize,
                bottom: (sy + 1).clamp(0, last) as usize,
                w_top: coefficient(1.0 - fy),
                w_bottom: coefficient(fy),
            }
        })
        .collect()
}

/// The horizontal pass over one source row: `3 * dst_w` sums, weights out of 2048.
fn horizontal(row: &[u8], taps: &[ColumnTap], out: &mut [i32]) {
    for (tap, sums) in taps.iter().zip(out.chunks_exact_mut(3)) {
        let left = &row[tap.left..tap.left + 3];
        let right = &row[tap.right..tap.right + 3];
        for c in 0..3 {
            sums[c] = i32::from(left[c]) * tap.w_left + i32::from(right[c]) * tap.w_right;
        }
    }
}

/// The vertical pass of two horizontal rows into one output row, with OpenCV's truncations.
fn vertical(top: &[i32], bottom: &[i32], tap: &RowTap, out: &mut [u8]) {
    for ((o, &t), &b) in out.iter_mut().zip(top).zip(bottom) {
        let sum = ((tap.w_top * (t >> 4)) >> 16) + ((tap.w_bottom * (b >> 4)) >> 16);
        // At most (1020 + 2) >> 2 = 255: the weights sum to 2048 and the rows to 255 * 2048.
        *o = ((sum + 2) >> 2) as u8;
    }
}

/// `src` (packed RGB, `src_w x src_h`, both nonzero) resized to `dst_w x dst_h` (both
/// nonzero) as OpenCV's `INTER_LINEAR` does it; packed RGB out. Each source row goes through
/// the horizontal pass at most once.
pub fn resize_linear_rgb(
    src: &[u8],
    (src_w, src_h): (usize, usize),
    (dst_w, dst_h): (usize, usize),
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        src_w * src_h * 3,
        "resize_linear_rgb: buffer size"
    );
    if (src_w, src_h) == (dst_w, dst_h) {
        return src.to_vec();
    }
    let columns = column_taps(src_w, dst_w);
    let rows = row_taps(src_h, dst_h);
    let row_len = src_w * 3;
    let source_row = |y: usize| &src[y * row_len..][..row_len];
    // The two most recent horizontal rows and the source row each holds; the taps' rows only
    // move forward, so a row needed again is one of these.
    let mut held: [(usize, Vec<i32>); 2] = [
        (usize::MAX, vec![0; dst_w * 3]),
        (usize::MAX, vec![0; dst_w * 3]),
    ];
    let mut out = vec![0u8; dst_w * dst_h * 3];
    for (tap, out_row) in rows.iter().zip(out.chunks_exact_mut(dst_w * 3)) {
        if held[0].0 != tap.top {
            if held[1].0 == tap.top {
                held.swap(0, 1);
            } else {
                horizontal(source_row(tap.top), &columns, &mut held[0].1);
                held[0].0 = tap.top;
            }
        }
        if held[1].0 != tap.bottom {
            horizontal(source_row(tap.bottom), &columns, &mut held[1].1);
            held[1].0 = tap.bottom;
        }
        vertical(&held[0].1, &held[1].1, tap, out_row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The red channel of packed RGB.
    fn red(rgb: &[u8]) -> Vec<u8> {
        rgb.chunks_exact(3).map(|p| p[0]).collect()
    }

    #[test]
    fn same_size_is_a_copy_and_flat_colour_stays_flat() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize_linear_rgb(&src, (5, 4), (5, 4)), src);
        let flat: Vec<u8> = [10u8, 200, 30].repeat(7 * 3);
        let up = resize_linear_rgb(&flat, (7, 3), (20, 11));
        assert!(up.chunks_exact(3).all(|p| p == [10, 200, 30]), "{up:?}");
    }

    #[test]
    fn weights_and_truncations_are_opencvs() {
        // A 2x1 ramp 0 -> 255 stretched to 4 columns: taps at x = -0.25 (clamped), 0.25, 0.75,
        // 1.25 (clamped).
        let ramp = [0u8, 0, 0, 255, 255, 255];
        assert_eq!(
            red(&resize_linear_rgb(&ramp, (2, 1), (4, 1))),
            [0, 64, 191, 255]
        );
        // The same two pixels as a column stretched to 5 rows: the vertical pass's truncations
        // give 229 where the float blend (229.5 at y = 0.9) rounds to 230; opencv-python 5.1
        // gives 229.
        assert_eq!(
            red(&resize_linear_rgb(&ramp, (1, 2), (1, 5))),
            [0, 26, 128, 229, 255]
        );
    }
}
