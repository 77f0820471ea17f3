//! A whole inverted-residual block (MobileNetV2/V3, EfficientNet-Lite) as one op: its 1x1
//! expand, depthwise and 1x1 projection run band by band through
//! [`kernels::expand_depthwise_new`](crate::model::kernels) on large maps, so the expanded map
//! stays in cache, and layer by layer otherwise. Both give the same bits.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{nhwc_shape, nhwc_slice, Conv, ConvKind};
use crate::model::kernels::{expand_depthwise_new, Nhwc, Projection};

/// `depthwise(expand(xs))`: the first two convolutions of an inverted-residual block whose
/// projection does not follow at once (squeeze-excitation sits in between).
pub(crate) fn expand_depthwise(
    xs: &Tensor,
    expand: &Conv,
    depthwise: &Conv,
) -> candle_core::Result<Tensor> {
    xs.apply_op1_no_bwd(&Chain {
        expand,
        depthwise,
        project: None,
        skip: false,
    })
}

/// `project(depthwise(expand(xs)))`, plus `xs` when `skip`: a whole inverted-residual block.
pub(crate) fn inverted_residual(
    xs: &Tensor,
    (expand, depthwise, project): (&Conv, &Conv, &Conv),
    skip: bool,
) -> candle_core::Result<Tensor> {
    xs.apply_op1_no_bwd(&Chain {
        expand,
        depthwise,
        project: Some(project),
        skip,
    })
}

/// Expand, depthwise and projection as one op.
struct Chain<'a> {
    expand: &'a Conv,
    depthwise: &'a Conv,
    project: Option<&'a Conv>,
    skip: bool,
}

impl Chain<'_> {
    fn run(&self, input: &[f32], shape: Nhwc) -> candle_core::Result<(Vec<f32>, Nhwc)> {
        let mid = self.expand.output_shape(shape)?;
        let dw = self.depthwise.output_shape(mid)?;
        let out_shape = match self.project {
            Some(project) => project.output_shape(dw)?,
            None => dw,
        };
        if self.skip && out_shape != shape {
            candle_core::bail!("a block's skip needs its output {out_shape:?} to match {shape:?}")
        }
        let residual = self.skip.then_some(input);
        let kinds_fit = self.expand.kind == ConvKind::Dense
            && self.depthwise.kind == ConvKind::Depthwise
            && self.project.is_none_or(|p| p.kind == ConvKind::Dense);
        if kinds_fit {
            let project_params = self.project.map(Conv::dense_params);
            let projection = project_params
                .as_ref()
                .map(|params| Projection { params, residual });
            let banded = expand_depthwise_new(
                input,
                shape,
                &self.expand.dense_params(),
                &self.depthwise.depthwise_params(),
                projection.as_ref(),
            );
            if let Some(out) = banded {
                return Ok((out, out_shape));
            }
        }
        let (ys, _) = self.expand.run(input, shape, None)?;
        let (ys, _) = self.depthwise.run(&ys, mid, None)?;
        match self.project {
            Some(project) => Ok((project.run(&ys, dw, residual)?.0, out_shape)),
            None => Ok((ys, out_shape)),
        }
    }
}

impl CustomOp1 for Chain<'_> {
    fn name(&self) -> &'static str {
        "wick-inverted-residual"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (input, shape) = nhwc_slice(storage, layout)?;
        let (out, out_shape) = self.run(input, shape)?;
        Ok((CpuStorage::F32(out), nhwc_shape(out_shape)))
    }
}
