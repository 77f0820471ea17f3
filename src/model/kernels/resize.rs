//! Bilinear resizing of NHWC activations with PyTorch's `F.interpolate(mode="bilinear")`
//! sampling, in both `align_corners` modes: torchvision's segmentation heads resample with
//! `align_corners=False`, segmentation_models_pytorch's `nn.Upsample` with `True`.
//!
//! Upsampling needs no antialiasing filter, and PyTorch applies none by default when
//! downsampling either, so each output pixel blends exactly four input pixels.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use super::{team, Fresh, Nhwc};

/// Where one output coordinate samples along an axis: two input indices and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeAxis {
    /// Lower input index.
    pub i0: usize,
    /// Upper input index (`i0` itself at the last input pixel).
    pub i1: usize,
    /// Weight of `i0`.
    pub w0: f32,
    /// Weight of `i1` (`1 - w0`).
    pub w1: f32,
}

impl ResizeAxis {
    /// The sampling plan of one axis resized from `input` to `output` pixels, as ATen's
    /// `area_pixel_compute_source_index` computes it (in f32, as PyTorch does for f32 tensors).
    pub fn plan(input: usize, output: usize, align_corners: bool) -> Vec<ResizeAxis> {
        let last = input.saturating_sub(1);
        (0..output)
            .map(|dst| {
                let src = if align_corners {
                    let scale = if output > 1 {
                        last as f32 / (output - 1) as f32
                    } else {
                        0.0
                    };
                    dst as f32 * scale
                } else {
                    let scale = input as f32 / output as f32;
                    ((dst as f32 + 0.5) * scale - 0.5).max(0.0)
                };
                let i0 = (src as usize).min(last);
                let i1 = (i0 + 1).min(last);
                let w1 = (src - i0 as f32).clamp(0.0, 1.0);
                ResizeAxis {
                    i0,
                    i1,
                    w0: 1.0 - w1,
                    w1,
                }
            })
            .collect()
    }
}

/// Resizes `(n, h, w, c)` `input` to `(n, out_h, out_w, c)` into `out` (which must hold
/// exactly that many values).
///
/// # Panics
/// If `input` or `out` do not match the shapes: a caller bug, never input data.
pub fn resize_bilinear(
    input: &[f32],
    shape: Nhwc,
    out_hw: (usize, usize),
    align_corners: bool,
    out: &mut [f32],
) {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and only initialised values are written.
    #[allow(unsafe_code)]
    let out = unsafe { &mut *(std::ptr::from_mut(out) as *mut [MaybeUninit<f32>]) };
    resize_into(input, shape, out_hw, align_corners, out);
}

/// [`resize_bilinear`] into a new buffer, never zero-filled first: a segmenter's logits
/// upsampled to a 512-pixel photo are 22 MB, whose fill on one core cost as much as the
/// resize itself.
pub(crate) fn resize_bilinear_new(
    input: &[f32],
    shape: Nhwc,
    (out_h, out_w): (usize, usize),
    align_corners: bool,
) -> Vec<f32> {
    let mut out = Fresh::new(shape.n * out_h * out_w * shape.c);
    resize_into(
        input,
        shape,
        (out_h, out_w),
        align_corners,
        out.as_uninit_mut(),
    );
    // SAFETY: `resize_into` writes every value of an output of this size.
    #[allow(unsafe_code)]
    unsafe {
        out.assume_init()
    }
}

/// Writes every value of `out`, in row ranges on the [`team`](super::team).
fn resize_into(
    input: &[f32],
    shape: Nhwc,
    (out_h, out_w): (usize, usize),
    align_corners: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let c = shape.c;
    assert_eq!(input.len(), shape.len(), "resize input size");
    assert_eq!(out.len(), shape.n * out_h * out_w * c, "resize output size");
    if out.is_empty() {
        return;
    }
    if shape.is_empty() {
        // An input of zero height or width has nothing to sample: zeros, as before.
        out.fill(MaybeUninit::new(0.0));
        return;
    }
    let rows = ResizeAxis::plan(shape.h, out_h, align_corners);
    let cols = ResizeAxis::plan(shape.w, out_w, align_corners);
    let row_len = shape.w * c;
    let out_row_len = out_w * c;
    let total_rows = shape.n * out_h;
    let parts = (3 * team::threads()).min(total_rows);
    // Each part's rows as a slice of its own (locked once, by the part alone).
    let mut rest = out;
    let out_rows: Vec<Mutex<&mut [MaybeUninit<f32>]>> = (0..parts)
        .map(|part| {
            let (first, end) = team::span(part, parts, total_rows);
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((end - first) * out_row_len);
            rest = tail;
            Mutex::new(head)
        })
        .collect();
    team::parallel_for(parts, |part| {
        let mut span = out_rows[part].lock().unwrap_or_else(|e| e.into_inner());
        let first = team::span(part, parts, total_rows).0;
        for (i, out_row) in span.chunks_exact_mut(out_row_len).enumerate() {
            let r = first + i;
            let (n, oy) = (r / out_h, r % out_h);
            let ry = rows[oy];
            let image = &input[n * shape.h * row_len..][..shape.h * row_len];
            let top = &image[ry.i0 * row_len..][..row_len];
            let bottom = &image[ry.i1 * row_len..][..row_len];
            for (px, rx) in out_row.chunks_exact_mut(c).zip(&cols) {
                let (a, b) = (&top[rx.i0 * c..][..c], &top[rx.i1 * c..][..c]);
                let (d, e) = (&bottom[rx.i0 * c..][..c], &bottom[rx.i1 * c..][..c]);
                for (k, o) in px.iter_mut().enumerate() {
                    let upper = rx.w0 * a[k] + rx.w1 * b[k];
                    let lower = rx.w0 * d[k] + rx.w1 * e[k];
                    o.write(ry.w0 * upper + ry.w1 * lower);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition on one channel, in f64, straight from the PyTorch docs formula.
    fn reference(
        input: &[f64],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        ac: bool,
    ) -> Vec<f64> {
        let source = |dst: usize, inp: usize, outp: usize| -> f64 {
            if ac {
                if outp > 1 {
                    dst as f64 * (inp - 1) as f64 / (outp - 1) as f64
                } else {
                    0.0
                }
            } else {
                ((dst as f64 + 0.5) * inp as f64 / outp as f64 - 0.5).max(0.0)
            }
        };
        let at = |y: usize, x: usize| input[y.min(h - 1) * w + x.min(w - 1)];
        let mut out = Vec::new();
        for oy in 0..oh {
            let sy = source(oy, h, oh);
            let (y0, fy) = (sy.floor() as usize, sy - sy.floor());
            for ox in 0..ow {
                let sx = source(ox, w, ow);
                let (x0, fx) = (sx.floor() as usize, sx - sx.floor());
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
                let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        out
    }

    fn run(input: &[f32], shape: Nhwc, size: (usize, usize), ac: bool) -> Vec<f32> {
        let mut out = vec![0.0; shape.n * size.0 * size.1 * shape.c];
        resize_bilinear(input, shape, size, ac, &mut out);
        out
    }

    #[test]
    fn matches_the_reference_in_both_modes_up_and_down() {
        let (h, w) = (5, 7);
        let plane: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 11) as f32 - 3.5).collect();
        for ac in [false, true] {
            for size in [(13, 29), (3, 4), (1, 1), (5, 7), (20, 3)] {
                // Two channels: the second is the first negated, so channels cannot mix.
                let input: Vec<f32> = plane.iter().flat_map(|&v| [v, -v]).collect();
                let shape = Nhwc { n: 1, h, w, c: 2 };
                let got = run(&input, shape, size, ac);
                let plane64: Vec<f64> = plane.iter().map(|&v| f64::from(v)).collect();
                let want = reference(&plane64, (h, w), size, ac);
                for (i, want) in want.iter().enumerate() {
                    let (g0, g1) = (got[2 * i], got[2 * i + 1]);
                    assert!(
                        (f64::from(g0) - want).abs() < 1e-5,
                        "ac={ac} {size:?} px {i}: {g0} vs {want}"
                    );
                    assert!((f64::from(g1) + want).abs() < 1e-5, "channel 1 at px {i}");
                }
            }
        }
    }

    #[test]
    fn align_corners_keeps_the_corner_pixels_and_half_pixel_mode_does_not_overshoot() {
        let input = [0.0, 1.0, 2.0, 3.0]; // 2x2, one channel
        let shape = Nhwc {
            n: 1,
            h: 2,
            w: 2,
            c: 1,
        };
        let out = run(&input, shape, (3, 3), true);
        assert_eq!(out, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
        let out = run(&input, shape, (4, 4), false);
        // Half-pixel centres: the outer output pixels clamp to the input's edge values.
        assert_eq!(&out[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&out[12..], &[2.0, 2.25, 2.75, 3.0]);
    }

    #[test]
    fn batches_are_resized_independently() {
        let input = [1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0];
        let shape = Nhwc {
            n: 2,
            h: 2,
            w: 2,
            c: 1,
        };
        let out = run(&input, shape, (3, 1), false);
        assert_eq!(out, vec![1.0, 1.0, 1.0, 5.0, 5.0, 5.0]);
    }
}
