//! `Conv::forward_gated`: a block's projection applied to its channel-gated map (the
//! squeeze-excitation's `project(x * gate)`) in one op, so the gated map is never written
//! (`kernels::dense_conv_gated_new` picks what the gate scales).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{gate_factors, nhwc_shape, nhwc_slice, Conv, ConvKind};
use crate::model::kernels::{dense_conv_gated_new, Nhwc};

impl Conv {
    /// `activation(conv(xs * gate) (+ residual))` for a dense convolution, where `gate` is
    /// `(n, 1, 1, c_in)`: one factor per image and input channel.
    pub(crate) fn forward_gated(
        &self,
        xs: &Tensor,
        gate: &Tensor,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let gate = gate_factors(xs, gate)?;
        let op = Gated { conv: self, gate };
        match residual {
            Some(residual) => xs.apply_op2_no_bwd(residual, &op),
            None => xs.apply_op1_no_bwd(&op),
        }
    }

    fn run_gated(
        &self,
        input: &[f32],
        shape: Nhwc,
        gate: &[f32],
        residual: Option<(&[f32], Nhwc)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out_shape = self.output_shape(shape)?;
        if self.kind != ConvKind::Dense {
            candle_core::bail!("a gated convolution needs a dense convolution")
        }
        if input.len() < shape.len() {
            candle_core::bail!(
                "convolution input holds {} values for {shape:?}",
                input.len()
            )
        }
        if let Some((_, residual_shape)) = residual {
            if residual_shape != out_shape {
                candle_core::bail!(
                    "residual {residual_shape:?} does not match the convolution output \
                     {out_shape:?}"
                )
            }
        }
        let params = self.dense_params();
        let out = dense_conv_gated_new(input, shape, &params, gate, residual.map(|r| r.0));
        Ok((CpuStorage::F32(out), nhwc_shape(out_shape)))
    }
}

struct Gated<'a> {
    conv: &'a Conv,
    gate: Vec<f32>,
}

impl CustomOp1 for Gated<'_> {
    fn name(&self) -> &'static str {
        "wick-conv-gated"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (input, shape) = nhwc_slice(storage, layout)?;
        self.conv.run_gated(input, shape, &self.gate, None)
    }
}

impl CustomOp2 for Gated<'_> {
    fn name(&self) -> &'static str {
        "wick-conv-gated-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (input, shape) = nhwc_slice(s1, l1)?;
        let residual = nhwc_slice(s2, l2)?;
        self.conv
            .run_gated(input, shape, &self.gate, Some(residual))
    }
}
