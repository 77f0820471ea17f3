//! An inverted-residual block (1x1 expand, depthwise, optional 1x1 projection and residual)
//! run band by band of output rows, so the expanded map never exists whole.
//!
//! Run layer by layer, MobileNetV2's and EfficientNet-Lite0's early blocks write an expanded
//! map of 2-5 MB (112x112x96, 56x56x144) that the depthwise step then reads back from memory,
//! and the depthwise output goes out and back once more for the projection; each step also
//! ends in a join of the thread team. Here each thread takes a run of output rows of one
//! image and, for a band of a few rows at a time, expands just the input rows the band's
//! windows read (into a buffer that stays in L2), runs the depthwise window over them and
//! projects the result straight into the block's output. Rows expanded for one band that the
//! next band reads again are kept, not recomputed. ONNX Runtime has no such fusion; this is
//! what cache-resident blocks need on a CPU with 1 MB of L2 per core. Measured in
//! `docs/performance.md`.
//!
//! Every value goes through the same kernels in the same order as the unfused layers
//! ([`super::dense`], [`super::depthwise`]), so the result is bit-identical to them.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;

use super::dense::{self, PackedWeights, Rows, Target};
use super::depthwise::depthwise_band;
use super::{team, ConvGeometry, DenseParams, DepthwiseParams, Fresh, Nhwc, SendPtr};

/// Expanded maps smaller than this (per image) stay layer by layer: they fit in L2 anyway,
/// and the band's halo rows would cost more than the memory traffic saved.
const MIN_BANDED_BYTES: usize = 1 << 20;

/// Bytes of expanded input rows one band aims for: the band, the depthwise scratch and the
/// depthwise output band together stay inside a core's 1 MB L2. Sized for 1 MB, these also
/// measured best on a 512 KB L2 (AMD Zen 3, `docs/performance.md`): scaled down to it,
/// EfficientNet-Lite0 at batch 8 ran 10% slower.
const BAND_BYTES: usize = 256 * 1024;

/// The 1x1 projection that ends a block, with the block's input when it adds a skip.
pub(crate) struct Projection<'a> {
    /// A pointwise convolution from the depthwise channels.
    pub(crate) params: &'a DenseParams<'a>,
    /// The block's input, added before the projection's activation.
    pub(crate) residual: Option<&'a [f32]>,
}

/// `project(depthwise(expand(input)))` into a new `(n, out_h, out_w, c_out)` buffer, or `None`
/// when the block is not worth banding or a step has no packed vector kernel (the caller then
/// runs the layers in turn). Without `project` the output is the depthwise map.
pub(crate) fn expand_depthwise_new(
    input: &[f32],
    shape: Nhwc,
    expand: &DenseParams<'_>,
    depthwise: &DepthwiseParams<'_>,
    project: Option<&Projection<'_>>,
) -> Option<Vec<f32>> {
    let c_mid = expand.bias.len();
    if shape.h * shape.w * c_mid * 4 < MIN_BANDED_BYTES {
        return None;
    }
    let band_rows = band_rows(shape.w * c_mid * 4, depthwise.geometry)?;
    expand_depthwise_banded(input, shape, expand, depthwise, project, band_rows)
}

/// Output rows per band for expanded rows of `row_bytes` under a depthwise window of
/// `geometry`, or `None` when banding costs more than it saves.
///
/// Each band keeps the expanded rows its window shares with the previous band, moving them to
/// the front of its buffer, and each thread's run of bands expands its first window whole.
/// When the window spans more rows than a band advances (MobileNetV3's dilated 5x5 in LR-ASPP
/// reads 9 rows of a 32-row map, 4 MB expanded: 8 rows moved and up to 8 expanded twice for
/// each row produced), that is more work than the memory traffic banding saves: the block
/// measured 1.5x faster layer by layer (`docs/performance.md`).
fn band_rows(row_bytes: usize, geometry: &ConvGeometry) -> Option<usize> {
    let (kh, dh) = (geometry.kernel.0, geometry.dilation.0);
    let sh = geometry.stride.0.max(1);
    let input_rows = (BAND_BYTES / row_bytes.max(1)).max(1);
    let band_rows = (input_rows.saturating_sub((kh - 1) * dh) / sh).max(1);
    let kept_rows = ((kh - 1) * dh + 1).saturating_sub(sh);
    (kept_rows <= band_rows * sh).then_some(band_rows)
}

/// [`expand_depthwise_new`] with bands of `band_rows` output rows, whatever the map's size.
pub(crate) fn expand_depthwise_banded(
    input: &[f32],
    shape: Nhwc,
    expand: &DenseParams<'_>,
    depthwise: &DepthwiseParams<'_>,
    project: Option<&Projection<'_>>,
    band_rows: usize,
) -> Option<Vec<f32>> {
    let block = Block::new(input, shape, expand, depthwise, project)?;
    let out_len = shape.n * block.out_h * block.out_w * block.c_out;
    let mut out = Fresh::new(out_len);
    if out_len == 0 {
        // SAFETY: nothing to initialise.
        return Some(unsafe { out.assume_init() });
    }
    let threads = team::threads();
    let bands = block.out_h.div_ceil(band_rows.max(1));
    // Two runs of rows per thread over the batch: a core the hypervisor slows takes fewer.
    let runs = (2 * threads).div_ceil(shape.n).clamp(1, bands);
    let dst = SendPtr(out.as_mut_ptr());
    team::parallel_for(shape.n * runs, |part| {
        let (image, run) = (part / runs, part % runs);
        let rows = team::span(run, runs, block.out_h);
        // SAFETY: runs write disjoint output rows of a buffer of `out_len` values, which
        // `Block::new` sized; the inputs were checked there.
        team::run_inline(|| unsafe { block.run_rows(image, rows, band_rows.max(1), dst) });
    });
    // SAFETY: the runs cover every output row of every image, and each row's every channel
    // is written (by the projection's tiles or the depthwise channel blocks).
    Some(unsafe { out.assume_init() })
}

thread_local! {
    /// The expanded input rows of the current band.
    static EXPANDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The depthwise output of the current band, before the projection.
    static DEPTHWISE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One call's checked operands and sizes.
struct Block<'a> {
    input: &'a [f32],
    shape: Nhwc,
    expand: &'a DenseParams<'a>,
    expand_packed: &'a PackedWeights,
    depthwise: &'a DepthwiseParams<'a>,
    project: Option<(&'a Projection<'a>, &'a PackedWeights)>,
    c_mid: usize,
    c_out: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
}

fn is_pointwise(geometry: &ConvGeometry) -> bool {
    geometry.kernel == (1, 1) && geometry.stride == (1, 1) && geometry.dilation == (1, 1) && {
        matches!(
            geometry.padding,
            super::Padding::Explicit {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0
            }
        ) || geometry.padding == super::Padding::TfSame
    }
}

impl<'a> Block<'a> {
    /// The operands if every step has a packed kernel and the sizes agree, else `None`.
    fn new(
        input: &'a [f32],
        shape: Nhwc,
        expand: &'a DenseParams<'a>,
        depthwise: &'a DepthwiseParams<'a>,
        project: Option<&'a Projection<'a>>,
    ) -> Option<Self> {
        let expand_packed = expand.packed?;
        let c_mid = expand.bias.len();
        let (kh, kw) = depthwise.geometry.kernel;
        let fits = is_pointwise(expand.geometry)
            && input.len() >= shape.len()
            && expand.weight_len() == shape.c * c_mid
            && depthwise.bias.len() == c_mid
            && depthwise.weight.len() == kh * kw * c_mid;
        if !fits {
            return None;
        }
        let res = depthwise.geometry.resolve(shape.h, shape.w)?;
        let project = match project {
            Some(p) => {
                let packed = p.params.packed?;
                let c_out = p.params.bias.len();
                let rows = shape.n * res.out_h * res.out_w;
                let fits = is_pointwise(p.params.geometry)
                    && p.params.weight_len() == c_mid * c_out
                    && p.residual.is_none_or(|r| r.len() >= rows * c_out);
                if !fits {
                    return None;
                }
                Some((p, packed))
            }
            None => None,
        };
        Some(Block {
            input,
            shape,
            expand,
            expand_packed,
            depthwise,
            c_out: project.map_or(c_mid, |(p, _)| p.params.bias.len()),
            project,
            c_mid,
            out_h: res.out_h,
            out_w: res.out_w,
            pad_top: res.pad_top,
        })
    }

    /// Input rows `[lo, hi)` the windows of output rows `rows` read, inside the image.
    fn input_rows(&self, rows: (usize, usize)) -> (usize, usize) {
        let geometry = self.depthwise.geometry;
        let (sh, dh, kh) = (geometry.stride.0, geometry.dilation.0, geometry.kernel.0);
        let top = rows.0 * sh;
        let bottom = (rows.1 - 1) * sh + (kh - 1) * dh + 1;
        let clip = |y: usize| y.saturating_sub(self.pad_top).min(self.shape.h);
        (clip(top), clip(bottom))
    }

    /// Output rows `rows` of image `image`, band after band.
    ///
    /// # Safety
    /// `out` must be valid for writes of the whole output; no other thread writes these rows.
    unsafe fn run_rows(&self, image: usize, rows: (usize, usize), band_rows: usize, out: SendPtr) {
        let mut expanded = EXPANDED.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let mut dw_out = DEPTHWISE.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let row_len = self.shape.w * self.c_mid;
        let geometry = self.depthwise.geometry;
        let (sh, dh, kh) = (geometry.stride.0, geometry.dilation.0, geometry.kernel.0);
        let band_in = ((band_rows - 1) * sh + (kh - 1) * dh + 1).min(self.shape.h) * row_len;
        if expanded.len() < band_in {
            expanded.resize(band_in, 0.0);
        }
        if self.project.is_some() && dw_out.len() < band_rows * self.out_w * self.c_mid {
            dw_out.resize(band_rows * self.out_w * self.c_mid, 0.0);
        }
        // The image rows `expanded` holds, from its start.
        let mut held = (0, 0);
        let mut oy0 = rows.0;
        while oy0 < rows.1 {
            let oy1 = (oy0 + band_rows).min(rows.1);
            let (lo, hi) = self.input_rows((oy0, oy1));
            // Rows the previous band expanded and this one reads move to the front.
            let kept_until = if held.1 > lo && held.0 <= lo {
                expanded.copy_within((lo - held.0) * row_len..(held.1 - held.0) * row_len, 0);
                held.1
            } else {
                lo
            };
            if hi > kept_until {
                let dst = expanded[(kept_until - lo) * row_len..].as_mut_ptr();
                self.expand_rows(image, (kept_until, hi), dst);
            }
            held = (lo, hi);
            self.depthwise_and_project(image, (lo, &expanded), (oy0, oy1), &mut dw_out, out);
            oy0 = oy1;
        }
        EXPANDED.with(|b| *b.borrow_mut() = expanded);
        DEPTHWISE.with(|b| *b.borrow_mut() = dw_out);
    }

    /// Expands input rows `rows` of `image` into `dst` (`c_mid` values per pixel).
    unsafe fn expand_rows(&self, image: usize, rows: (usize, usize), dst: *mut f32) {
        let (h, w, c) = (self.shape.h, self.shape.w, self.shape.c);
        let src = &self.input[(image * h + rows.0) * w * c..(image * h + rows.1) * w * c];
        let shape = Nhwc {
            n: 1,
            h: rows.1 - rows.0,
            w,
            c,
        };
        let geometry = ConvGeometry::square(1, 1, 0);
        let res = geometry.resolve(shape.h, w).expect("a 1x1 window fits");
        let target = Target {
            data: dst,
            row_stride: self.c_mid,
            bias: self.expand.bias,
            residual: None,
            activation: self.expand.activation,
        };
        dense::run(
            &Rows::new(src, shape, geometry, res),
            self.expand_packed,
            &target,
        );
    }

    /// The depthwise window over the band's expanded rows (`expanded` starts at image row
    /// `first_row`), then the projection; without one, the depthwise rows are the output.
    unsafe fn depthwise_and_project(
        &self,
        image: usize,
        (first_row, expanded): (usize, &[f32]),
        rows: (usize, usize),
        dw_out: &mut [f32],
        out: SendPtr,
    ) {
        let image_shape = Nhwc {
            n: 1,
            c: self.c_mid,
            ..self.shape
        };
        let plane = self.out_h * self.out_w;
        let Some((projection, packed)) = self.project else {
            let dst = out.0.add(image * plane * self.c_mid);
            depthwise_band(
                expanded,
                image_shape,
                first_row,
                self.depthwise,
                dst,
                0,
                rows,
            );
            return;
        };
        depthwise_band(
            expanded,
            image_shape,
            first_row,
            self.depthwise,
            dw_out.as_mut_ptr(),
            rows.0,
            rows,
        );
        let band = Nhwc {
            n: 1,
            h: rows.1 - rows.0,
            w: self.out_w,
            c: self.c_mid,
        };
        let geometry = ConvGeometry::square(1, 1, 0);
        let res = geometry.resolve(band.h, band.w).expect("a 1x1 window fits");
        let first_pixel = image * plane + rows.0 * self.out_w;
        let target = Target {
            data: out.0.add(first_pixel * self.c_out),
            row_stride: self.c_out,
            bias: projection.params.bias,
            residual: projection.residual.map(|r| &r[first_pixel * self.c_out..]),
            activation: projection.params.activation,
        };
        let src = &dw_out[..band.len()];
        dense::run(&Rows::new(src, band, geometry, res), packed, &target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{
        dense_conv_new, depthwise_conv_new, pseudo_random, Activation, Padding,
    };

    struct Case {
        shape: Nhwc,
        c_mid: usize,
        c_out: usize,
        geometry: ConvGeometry,
    }

    /// The unfused layers (the reference) against the banded block, bit for bit.
    fn check(case: &Case, band_rows: usize, project: bool, residual: bool) {
        let Case {
            shape,
            c_mid,
            c_out,
            geometry,
        } = *case;
        let pointwise = ConvGeometry::square(1, 1, 0);
        let input = pseudo_random(shape.len(), 3);
        let w_expand = pseudo_random(shape.c * c_mid, 4);
        let b_expand = pseudo_random(c_mid, 5);
        let Some(packed_expand) = PackedWeights::pack(shape.c, c_mid, &w_expand) else {
            return; // no vector unit: the block always declines
        };
        let expand = DenseParams {
            geometry: &pointwise,
            weight: &w_expand,
            bias: &b_expand,
            activation: Activation::Relu6,
            packed: Some(&packed_expand),
        };
        let taps = geometry.kernel.0 * geometry.kernel.1;
        let w_dw = pseudo_random(taps * c_mid, 6);
        let b_dw = pseudo_random(c_mid, 7);
        let depthwise = DepthwiseParams {
            geometry: &geometry,
            weight: &w_dw,
            bias: &b_dw,
            activation: Activation::Hardswish,
        };
        let w_project = pseudo_random(c_mid * c_out, 8);
        let b_project = pseudo_random(c_out, 9);
        let packed_project = PackedWeights::pack(c_mid, c_out, &w_project).expect("packs");
        let project_params = DenseParams {
            geometry: &pointwise,
            weight: &w_project,
            bias: &b_project,
            activation: Activation::Identity,
            packed: Some(&packed_project),
        };
        let expanded = dense_conv_new(&input, shape, &expand, None);
        let dw = depthwise_conv_new(&expanded, Nhwc { c: c_mid, ..shape }, &depthwise);
        let res = geometry.resolve(shape.h, shape.w).expect("fits");
        let dw_shape = Nhwc {
            n: shape.n,
            h: res.out_h,
            w: res.out_w,
            c: c_mid,
        };
        let residual = residual.then_some(&input[..]);
        let expected = if project {
            dense_conv_new(&dw, dw_shape, &project_params, residual)
        } else {
            dw
        };
        let projection = Projection {
            params: &project_params,
            residual,
        };
        let got = expand_depthwise_banded(
            &input,
            shape,
            &expand,
            &depthwise,
            project.then_some(&projection),
            band_rows,
        )
        .expect("the block runs banded");
        assert_eq!(
            got, expected,
            "{shape:?} {geometry:?} bands of {band_rows}, project {project}"
        );
    }

    #[test]
    fn banded_blocks_equal_the_layers_run_in_turn() {
        let tf_same = |k, s| ConvGeometry {
            kernel: (k, k),
            stride: (s, s),
            dilation: (1, 1),
            padding: Padding::TfSame,
        };
        let dilated = ConvGeometry {
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (2, 2),
            padding: Padding::symmetric(2),
        };
        let geometries = [
            ConvGeometry::square(3, 1, 1),
            ConvGeometry::square(3, 2, 1),
            ConvGeometry::square(5, 1, 2),
            ConvGeometry::square(5, 2, 2),
            tf_same(3, 2),
            tf_same(5, 2),
            dilated,
        ];
        for (n, h, w) in [(1, 13, 9), (3, 10, 7)] {
            for geometry in geometries {
                let stride = geometry.stride.0;
                let case = Case {
                    shape: Nhwc { n, h, w, c: 8 },
                    c_mid: 40,
                    c_out: if stride == 1 { 8 } else { 24 },
                    geometry,
                };
                for band_rows in [1, 2, 3, 8, 100] {
                    check(&case, band_rows, true, stride == 1);
                    check(&case, band_rows, false, false);
                }
            }
        }
    }

    #[test]
    fn windows_taller_than_a_band_advances_are_left_to_the_layers() {
        let dilated = |k: usize, d: usize| ConvGeometry {
            kernel: (k, k),
            stride: (1, 1),
            dilation: (d, d),
            padding: Padding::symmetric(d * (k - 1) / 2),
        };
        // MobileNetV2 at 224: 112x112x96 expanded, 3x3 stride 2; 56x56x144, 3x3.
        assert_eq!(
            band_rows(112 * 96 * 4, &ConvGeometry::square(3, 2, 1)),
            Some(2)
        );
        assert_eq!(
            band_rows(56 * 144 * 4, &ConvGeometry::square(3, 1, 1)),
            Some(6)
        );
        // EfficientNet at 512: 256x256x96 expanded, 3x3 stride 2, one row per band.
        assert_eq!(
            band_rows(256 * 96 * 4, &ConvGeometry::square(3, 2, 1)),
            Some(1)
        );
        // LR-ASPP's MobileNetV3 at 512: 32x32x960, 5x5 dilated 2 (a 9-row window) and
        // 32x32x672, 3x3: one row per band, moving 8 and 2 rows for it.
        assert_eq!(band_rows(32 * 960 * 4, &dilated(5, 2)), None);
        assert_eq!(band_rows(32 * 672 * 4, &dilated(3, 1)), None);
    }

    #[test]
    fn small_maps_are_left_to_the_layers() {
        let shape = Nhwc {
            n: 1,
            h: 7,
            w: 7,
            c: 16,
        };
        let pointwise = ConvGeometry::square(1, 1, 0);
        let weight = pseudo_random(16 * 96, 1);
        let bias = vec![0.0; 96];
        let Some(packed) = PackedWeights::pack(16, 96, &weight) else {
            return;
        };
        let expand = DenseParams {
            geometry: &pointwise,
            weight: &weight,
            bias: &bias,
            activation: Activation::Relu6,
            packed: Some(&packed),
        };
        let geometry = ConvGeometry::square(3, 1, 1);
        let w_dw = pseudo_random(9 * 96, 2);
        let depthwise = DepthwiseParams {
            geometry: &geometry,
            weight: &w_dw,
            bias: &bias,
            activation: Activation::Relu6,
        };
        let input = pseudo_random(shape.len(), 3);
        assert!(expand_depthwise_new(&input, shape, &expand, &depthwise, None).is_none());
    }
}
