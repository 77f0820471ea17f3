//! Nearest-neighbour upsampling of NHWC activations by an integer factor (YOLO necks'
//! `nn.Upsample(scale_factor=2, mode="nearest")`).

use super::Nhwc;

/// Repeats every pixel `factor` times along both axes: `out` is `(n, h * f, w * f, c)`.
///
/// # Panics
/// If `input` or `out` do not hold the shapes' element counts: a bug in the caller.
pub fn upsample_nearest(input: &[f32], shape: Nhwc, factor: usize, out: &mut [f32]) {
    let Nhwc { n, h, w, c } = shape;
    let (out_h, out_w) = (h * factor, w * factor);
    assert!(input.len() >= shape.len(), "upsample input too short");
    assert!(
        out.len() >= n * out_h * out_w * c,
        "upsample output too short"
    );
    for b in 0..n {
        for y in 0..h {
            let src_row = &input[(b * h + y) * w * c..][..w * c];
            let first = (b * out_h + y * factor) * out_w * c;
            {
                let dst_row = &mut out[first..first + out_w * c];
                for (x, pixel) in src_row.chunks_exact(c).enumerate() {
                    for r in 0..factor {
                        dst_row[(x * factor + r) * c..][..c].copy_from_slice(pixel);
                    }
                }
            }
            // The other output rows of this source row are copies of the first.
            for r in 1..factor {
                out.copy_within(first..first + out_w * c, first + r * out_w * c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pixel_becomes_a_block() {
        // 1x2x2 image with 1 channel -> 4x4.
        let input = [1.0, 2.0, 3.0, 4.0];
        let mut out = vec![0.0; 16];
        upsample_nearest(
            &input,
            Nhwc {
                n: 1,
                h: 2,
                w: 2,
                c: 1,
            },
            2,
            &mut out,
        );
        #[rustfmt::skip]
        let want = [
            1.0, 1.0, 2.0, 2.0,
            1.0, 1.0, 2.0, 2.0,
            3.0, 3.0, 4.0, 4.0,
            3.0, 3.0, 4.0, 4.0,
        ];
        assert_eq!(out, want);
    }
}
