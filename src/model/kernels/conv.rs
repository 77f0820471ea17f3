//! Dense convolutions on NHWC slices (im2col + one matrix product per row block), with padding
//! computed inside the kernel and bias, activation and residual fused into the output pass;
//! the geometry shared with the depthwise and pooling kernels; per-channel affine transforms.

use std::cell::RefCell;

use rayon::prelude::*;

use super::dense::{self, PackedWeights, Rows, Target};
use super::{rows_per_task, winograd, Activation, Fresh, MatMul, Nhwc};

fn rows_count(shape: Nhwc, res: &Resolved) -> usize {
    shape.n * res.out_h * res.out_w
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Fixed zero padding on each side (PyTorch's `padding=`), in pixels.
    Explicit {
        /// Rows added above.
        top: usize,
        /// Columns added on the left.
        left: usize,
        /// Rows added below.
        bottom: usize,
        /// Columns added on the right.
        right: usize,
    },
    /// TensorFlow "SAME": output = ceil(input / stride), the odd pixel of padding goes to the
    /// bottom / right. Computed per input size, as TF-ported checkpoints expect.
    TfSame,
}

impl Padding {
    /// PyTorch's symmetric `padding=p`.
    pub fn symmetric(p: usize) -> Self {
        Padding::Explicit {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }
}

/// Kernel size, stride, dilation and padding of a 2-D convolution or pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Vertical and horizontal dilation (1 for an ordinary convolution).
    pub dilation: (usize, usize),
    /// Padding mode.
    pub padding: Padding,
}

/// Output size and the padding actually applied, for one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) out_h: usize,
    pub(crate) out_w: usize,
    pub(crate) pad_top: usize,
    pub(crate) pad_left: usize,
}

impl ConvGeometry {
    /// A square `k x k` window with stride `s` and symmetric PyTorch padding `p`.
    pub fn square(k: usize, s: usize, p: usize) -> Self {
        ConvGeometry {
            kernel: (k, k),
            stride: (s, s),
            dilation: (1, 1),
            padding: Padding::symmetric(p),
        }
    }

    /// Output size for an `h x w` input, or `None` when the input is smaller than the window.
    pub(crate) fn resolve(&self, h: usize, w: usize) -> Option<Resolved> {
        let (out_h, pad_top) = resolve_axis(h, self.kernel.0, self.stride.0, self.dilation.0, {
            match self.padding {
                Padding::Explicit { top, bottom, .. } => Some((top, bottom)),
                Padding::TfSame => None,
            }
        })?;
        let (out_w, pad_left) = resolve_axis(w, self.kernel.1, self.stride.1, self.dilation.1, {
            match self.padding {
                Padding::Explicit { left, right, .. } => Some((left, right)),
                Padding::TfSame => None,
            }
        })?;
        Some(Resolved {
            out_h,
            out_w,
            pad_top,
            pad_left,
        })
    }
}

/// One spatial axis: `(output size, leading pad)`. `explicit` is `(before, after)` or `None` for
/// TF "same".
fn resolve_axis(
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    explicit: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    let stride = stride.max(1);
    match explicit {
        Some((before, after)) => {
            let padded = size + before + after;
            (padded >= span).then(|| ((padded - span) / stride + 1, before))
        }
        None => {
            let out = size.div_ceil(stride);
            let total = ((out.saturating_sub(1)) * stride + span).saturating_sub(size);
            (out > 0).then_some((out, total / 2))
        }
    }
}

/// Weights of a dense (groups = 1) convolution with batch norm already folded in.
pub struct DenseParams<'a> {
    /// Window geometry.
    pub geometry: &'a ConvGeometry,
    /// `[kh * kw * c_in, c_out]`, row-major: the im2col column order is (ky, kx, c_in).
    /// May be empty when `packed` holds the weights: layers keep only one copy.
    pub weight: &'a [f32],
    /// `[c_out]`.
    pub bias: &'a [f32],
    /// Activation applied after bias and residual.
    pub activation: Activation,
    /// `weight` packed for this CPU's vector kernel, when it has one.
    pub(crate) packed: Option<&'a PackedWeights>,
}

impl DenseParams<'_> {
    /// Values of the `kh * kw * c_in x c_out` weight matrix, in whichever form holds it.
    pub(crate) fn weight_len(&self) -> usize {
        self.packed.map_or(self.weight.len(), |p| {
            let (k, n) = p.dims();
            k * n
        })
    }
}

/// Where a dense convolution writes: `rows` of `c_out` values `row_stride` apart, optionally
/// adding a residual (contiguous, `c_out` per row) before the activation.
pub struct ConvOutput<'a> {
    /// Destination, starting at the first output channel of the first row.
    pub data: &'a mut [f32],
    /// Distance between consecutive output pixels (`c_out` for a plain tensor).
    pub row_stride: usize,
    /// Residual to add, same layout as a contiguous output.
    pub residual: Option<&'a [f32]>,
}

thread_local! {
    /// im2col scratch, reused across layers and calls on the same thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Dense convolution over an NHWC input. `out` must hold `n * out_h * out_w` rows; the caller
/// resolves the geometry first (see [`ConvGeometry`]).
pub fn dense_conv(input: &[f32], shape: Nhwc, params: &DenseParams<'_>, out: ConvOutput<'_>) {
    let geometry = params.geometry;
    let Some(res) = geometry.resolve(shape.h, shape.w) else {
        return;
    };
    let c_out = params.bias.len();
    let k = geometry.kernel.0 * geometry.kernel.1 * shape.c;
    let rows = shape.n * res.out_h * res.out_w;
    if rows == 0 || c_out == 0 {
        return;
    }
    let is_direct = geometry.kernel == (1, 1)
        && geometry.stride == (1, 1)
        && res.pad_top == 0
        && res.pad_left == 0
        && res.out_h == shape.h
        && res.out_w == shape.w;
    if let Some(packed) = params.packed {
        assert!(
            out.data.len() >= (rows_count(shape, &res) - 1) * out.row_stride + c_out,
            "output too short"
        );
        // SAFETY: `out.data` is borrowed mutably for the rows checked above, so nothing else
        // aliases it.
        #[allow(unsafe_code)]
        unsafe {
            run_packed(
                input,
                shape,
                res,
                params,
                packed,
                out.data.as_mut_ptr(),
                out.row_stride,
                out.residual,
            )
        };
        return;
    }
    let per_task = rows_per_task(rows, 2 * k * c_out);
    let is_single_task = per_task >= rows;
    let ConvOutput {
        data,
        row_stride,
        residual,
    } = out;
    data.par_chunks_mut(per_task * row_stride)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first_row = task * per_task;
            let m = chunk.len().div_ceil(row_stride).min(rows - first_row);
            for i in 0..m {
                let row = &mut chunk[i * row_stride..i * row_stride + c_out];
                row.copy_from_slice(params.bias);
                if let Some(residual) = residual {
                    let r = &residual[(first_row + i) * c_out..][..c_out];
                    row.iter_mut().zip(r).for_each(|(o, r)| *o += r);
                }
            }
            if is_direct {
                let lhs = &input[first_row * shape.c..];
                let product = MatMul {
                    m,
                    n: c_out,
                    k,
                    lhs,
                    lhs_row_stride: shape.c,
                    rhs: params.weight,
                };
                product.accumulate_into(chunk, row_stride, is_single_task);
            } else {
                // Taken out rather than borrowed: a thread waiting inside gemm may steal another
                // task that needs scratch too.
                let mut cols = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
                cols.resize(m * k, 0.0);
                im2col(input, shape, geometry, &res, first_row, &mut cols[..m * k]);
                let product = MatMul {
                    m,
                    n: c_out,
                    k,
                    lhs: &cols,
                    lhs_row_stride: k,
                    rhs: params.weight,
                };
                product.accumulate_into(chunk, row_stride, is_single_task);
                SCRATCH.with(|s| *s.borrow_mut() = cols);
            }
            for i in 0..m {
                params
                    .activation
                    .apply(&mut chunk[i * row_stride..i * row_stride + c_out]);
            }
        });
}

/// [`dense_conv`] into a new contiguous `(rows, c_out)` buffer. With packed weights every value
/// is written by the vector kernel and the buffer is never zero-filled; the portable path
/// starts from zeros.
pub(crate) fn dense_conv_new(
    input: &[f32],
    shape: Nhwc,
    params: &DenseParams<'_>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let Some(res) = params.geometry.resolve(shape.h, shape.w) else {
        return Vec::new();
    };
    let c_out = params.bias.len();
    let len = rows_count(shape, &res) * c_out;
    let Some(packed) = params.packed else {
        let mut out = vec![0.0; len];
        let target = ConvOutput {
            data: &mut out,
            row_stride: c_out,
            residual,
        };
        dense_conv(input, shape, params, target);
        return out;
    };
    let mut out = Fresh::new(len);
    if len == 0 {
        // SAFETY: nothing to initialise.
        #[allow(unsafe_code)]
        return unsafe { out.assume_init() };
    }
    // SAFETY: `out` is a new buffer of every output row, owned here; `dense::run` writes each
    // of its values (every tile of every panel).
    #[allow(unsafe_code)]
    unsafe {
        run_packed(
            input,
            shape,
            res,
            params,
            packed,
            out.as_mut_ptr(),
            c_out,
            residual,
        );
        out.assume_init()
    }
}

/// The packed-weight kernel over `out`'s rows; `dense::run` checks the input, residual and
/// weights.
///
/// # Safety
/// `data` must be valid for writes of every output row `row_stride` apart and alias nothing
/// else; it may be uninitialised.
#[allow(unsafe_code, clippy::too_many_arguments)]
pub(super) unsafe fn run_packed(
    input: &[f32],
    shape: Nhwc,
    res: Resolved,
    params: &DenseParams<'_>,
    packed: &PackedWeights,
    data: *mut f32,
    row_stride: usize,
    residual: Option<&[f32]>,
) {
    let target = Target {
        data,
        row_stride,
        bias: params.bias,
        residual,
        activation: params.activation,
    };
    let geometry = params.geometry;
    let c_out = params.bias.len();
    if geometry.kernel == (3, 3)
        && geometry.stride == (1, 1)
        && winograd::is_enabled()
        && winograd::pays_off(
            shape.n,
            (res.out_h, res.out_w),
            geometry.dilation,
            (shape.c, c_out),
        )
    {
        let dilation = geometry.dilation;
        match packed.winograd(shape.c) {
            Some(winograd::Filters::Kept(transformed)) => {
                // SAFETY: as below; `winograd::run` writes the same rows.
                unsafe { winograd::run(input, shape, res, dilation, transformed, &target) };
                return;
            }
            Some(winograd::Filters::Streamed) => {
                // SAFETY: as below; `winograd::run_streamed` writes the same rows.
                unsafe { winograd::run_streamed(input, shape, res, dilation, packed, &target) };
                return;
            }
            None => {}
        }
    }
    let rows = Rows::new(input, shape, *geometry, res);
    // SAFETY: the caller vouches for `data`.
    unsafe { dense::run(&rows, packed, &target) }
}

/// Gathers the receptive fields of output rows `first_row..` into `cols`, one row of
/// `kh * kw * c` values per output pixel, zeros where the window leaves the image.
fn im2col(
    input: &[f32],
    shape: Nhwc,
    geometry: &ConvGeometry,
    res: &Resolved,
    first_row: usize,
    cols: &mut [f32],
) {
    let (kh, kw) = geometry.kernel;
    let (sh, sw) = geometry.stride;
    let (dh, dw) = geometry.dilation;
    let c = shape.c;
    let k = kh * kw * c;
    let plane = res.out_h * res.out_w;
    for (i, col) in cols.chunks_exact_mut(k).enumerate() {
        let r = first_row + i;
        let (n, rem) = (r / plane, r % plane);
        let (oy, ox) = (rem / res.out_w, rem % res.out_w);
        for ky in 0..kh {
            let iy = (oy * sh + ky * dh) as isize - res.pad_top as isize;
            for kx in 0..kw {
                let ix = (ox * sw + kx * dw) as isize - res.pad_left as isize;
                let dst = &mut col[(ky * kw + kx) * c..][..c];
                if iy < 0 || ix < 0 || iy as usize >= shape.h || ix as usize >= shape.w {
                    dst.fill(0.0);
                } else {
                    let src = ((n * shape.h + iy as usize) * shape.w + ix as usize) * c;
                    dst.copy_from_slice(&input[src..src + c]);
                }
            }
        }
    }
}

/// A per-channel affine transform and activation: an unfolded batch norm in front of a
/// convolution (DenseNet's pre-activation layers, where a ReLU sits between norm and conv).
pub struct ChannelAffine<'a> {
    /// Per-channel multiplier.
    pub scale: &'a [f32],
    /// Per-channel offset, added after scaling.
    pub shift: &'a [f32],
    /// Activation applied after the affine transform.
    pub activation: Activation,
}

/// Applies `affine` to the first `scale.len()` channels of each input row (rows
/// `in_row_stride` apart) and writes them contiguously into `out`.
pub fn scale_shift_act(
    input: &[f32],
    in_row_stride: usize,
    affine: &ChannelAffine<'_>,
    out: &mut [f32],
) {
    let c = affine.scale.len();
    if c == 0 {
        return;
    }
    let rows_per_chunk = 256;
    out.par_chunks_mut(rows_per_chunk * c)
        .enumerate()
        .for_each(|(chunk_index, chunk)| {
            for (i, dst) in chunk.chunks_exact_mut(c).enumerate() {
                let row = chunk_index * rows_per_chunk + i;
                let src = &input[row * in_row_stride..][..c];
                for (((d, &x), &s), &b) in
                    dst.iter_mut().zip(src).zip(affine.scale).zip(affine.shift)
                {
                    *d = x.mul_add(s, b);
                }
                affine.activation.apply(dst);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{oihw_to_rows, pseudo_random, reference_conv};

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-4, "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn dense_conv_matches_the_definition_for_strides_padding_and_dilation() {
        let shape = Nhwc {
            n: 2,
            h: 9,
            w: 7,
            c: 3,
        };
        let input = pseudo_random(shape.len(), 1);
        let cases = [
            ConvGeometry::square(3, 1, 1),
            ConvGeometry::square(3, 2, 1),
            ConvGeometry::square(7, 2, 3),
            ConvGeometry::square(1, 2, 0),
            ConvGeometry::square(1, 1, 0),
            ConvGeometry {
                kernel: (3, 3),
                stride: (2, 2),
                dilation: (1, 1),
                padding: Padding::TfSame,
            },
            ConvGeometry {
                kernel: (3, 3),
                stride: (1, 1),
                dilation: (2, 2),
                padding: Padding::symmetric(2),
            },
        ];
        let c_out = 5;
        for geometry in cases {
            let (kh, kw) = geometry.kernel;
            let w_oihw = pseudo_random(c_out * shape.c * kh * kw, 2);
            let (expected, res) = reference_conv(&input, shape, &geometry, &w_oihw, (c_out, 1));
            let weight = oihw_to_rows(&w_oihw, c_out, shape.c, kh * kw);
            let bias = vec![0.0; c_out];
            let params = DenseParams {
                geometry: &geometry,
                weight: &weight,
                bias: &bias,
                activation: Activation::Identity,
                packed: None,
            };
            let mut out = vec![f32::NAN; shape.n * res.out_h * res.out_w * c_out];
            dense_conv(
                &input,
                shape,
                &params,
                ConvOutput {
                    data: &mut out,
                    row_stride: c_out,
                    residual: None,
                },
            );
            assert_close(&out, &expected);
        }
    }

    #[test]
    fn tf_same_padding_puts_the_odd_pixel_at_the_end() {
        let geometry = ConvGeometry {
            kernel: (3, 3),
            stride: (2, 2),
            dilation: (1, 1),
            padding: Padding::TfSame,
        };
        // 224 -> 112 needs 1 pixel of padding in total: all of it at the bottom/right.
        let res = geometry.resolve(224, 225).expect("resolves");
        assert_eq!(
            (res.out_h, res.out_w, res.pad_top, res.pad_left),
            (112, 113, 0, 1)
        );
        let k5 = ConvGeometry {
            kernel: (5, 5),
            ..geometry
        };
        assert_eq!(
            k5.resolve(14, 14).map(|r| (r.out_h, r.pad_top)),
            Some((7, 1))
        );
    }

    #[test]
    fn dense_conv_adds_the_residual_before_the_activation_and_writes_strided_rows() {
        let shape = Nhwc {
            n: 1,
            h: 2,
            w: 2,
            c: 2,
        };
        let input = vec![1.0, 2.0, 3.0, 4.0, -5.0, -6.0, 0.0, 1.0];
        // [c_in, c_out]: output channel 0 sums both inputs, channel 1 is bias only.
        let weight = vec![1.0, 0.0, 1.0, 0.0];
        let bias = vec![0.0, 1.0];
        let residual = vec![10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -9.0];
        let geometry = ConvGeometry::square(1, 1, 0);
        let params = DenseParams {
            geometry: &geometry,
            weight: &weight,
            bias: &bias,
            activation: Activation::Relu,
            packed: None,
        };
        let mut out = vec![-1.0; 4 * 3];
        dense_conv(
            &input,
            shape,
            &params,
            ConvOutput {
                data: &mut out[..11],
                row_stride: 3,
                residual: Some(&residual),
            },
        );
        // out[c0] = x0 + x1 (+ residual), out[c1] = 1 (+ residual); column 3 of each row untouched.
        assert_eq!(
            out,
            vec![13.0, 1.0, -1.0, 7.0, 1.0, -1.0, 0.0, 1.0, -1.0, 1.0, 0.0, -1.0]
        );
    }
}
