//! Layers built once from checkpoint tensors and run through the NHWC kernels: a convolution
//! with its batch norm folded in, and pooling; `transformer.rs` holds the ViT encoder block.
//! (The linear classifier is `classify/linear.rs`.)
//!
//! Activations between layers are contiguous `(n, h, w, c)` f32 Candle tensors on the CPU; the
//! kernels run as Candle custom ops on their storage, so no layer copies its input.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::error::ModelError;
use super::kernels::{
    self, dense_conv, dense_conv_new, depthwise_conv_new, Activation, ConvGeometry, ConvOutput,
    DenseParams, DepthwiseParams, Nhwc, PackedWeights, Padding,
};
use super::precision::{self, Precision};
use super::weights::Weights;

pub(crate) mod attention;
mod concat;
mod gated;
mod inverted_residual;
pub(crate) mod transformer;
pub(crate) use inverted_residual::{expand_depthwise, inverted_residual};

/// Hyper-parameters of a convolution as the checkpoint's module declared them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    /// Input channels.
    pub(crate) c_in: usize,
    /// Output channels.
    pub(crate) c_out: usize,
    /// Square kernel size.
    pub(crate) kernel: usize,
    /// Stride (both axes).
    pub(crate) stride: usize,
    /// Padding mode.
    pub(crate) padding: Padding,
    /// Dilation (both axes).
    pub(crate) dilation: usize,
    /// 1 for a dense convolution, `c_in` (= `c_out`) for a depthwise one.
    pub(crate) groups: usize,
    /// Whether the convolution has its own `bias` tensor.
    pub(crate) has_bias: bool,
    /// Activation after the (folded) batch norm.
    pub(crate) activation: Activation,
}

impl ConvSpec {
    /// A bias-free `k x k` convolution with PyTorch's usual padding `(k - 1) / 2`.
    pub(crate) fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize) -> Self {
        ConvSpec {
            c_in,
            c_out,
            kernel,
            stride,
            padding: Padding::symmetric((kernel - 1) / 2),
            dilation: 1,
            groups: 1,
            has_bias: false,
            activation: Activation::Identity,
        }
    }

    /// The same convolution, depthwise.
    pub(crate) fn depthwise(self) -> Self {
        ConvSpec {
            groups: self.c_in,
            ..self
        }
    }

    /// The same convolution followed by `activation`.
    pub(crate) fn act(self, activation: Activation) -> Self {
        ConvSpec { activation, ..self }
    }

    /// The same convolution with another padding mode.
    pub(crate) fn pad(self, padding: Padding) -> Self {
        ConvSpec { padding, ..self }
    }
}

/// Where a batch norm's four tensors live and its epsilon.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchNorm<'a> {
    /// Key prefix, e.g. `layer1.0.bn1`.
    pub(crate) prefix: &'a str,
    /// Epsilon added to the running variance.
    pub(crate) eps: f64,
}

/// A per-channel batch norm in eval mode, as `scale * x + shift`.
pub(crate) fn load_batch_norm(
    weights: &Weights,
    bn: BatchNorm<'_>,
    channels: usize,
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let get = |leaf: &str| -> Result<Vec<f32>, ModelError> {
        let t = weights.get(&format!("{}.{leaf}", bn.prefix), &[channels])?;
        Ok(t.to_vec1::<f32>()?)
    };
    let (gamma, beta, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let mut scale = Vec::with_capacity(channels);
    let mut shift = Vec::with_capacity(channels);
    for c in 0..channels {
        // Folded in f64: the factor multiplies every weight of the channel.
        let s = f64::from(gamma[c]) / (f64::from(var[c]) + bn.eps).sqrt();
        scale.push(s as f32);
        shift.push((f64::from(beta[c]) - f64::from(mean[c]) * s) as f32);
    }
    Ok((scale, shift))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    Dense,
    Depthwise,
}

/// A convolution with its batch norm folded into weight and bias, its activation fused.
#[derive(Debug)]
pub(crate) struct Conv {
    geometry: ConvGeometry,
    kind: ConvKind,
    /// Dense: `[kh * kw * c_in, c_out]`, empty when `packed` holds it. Depthwise:
    /// `[kh * kw, c]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    activation: Activation,
    /// Dense: `weight` packed for this CPU's vector kernel, when it has one.
    /// Boxed: layers sit in enums next to smaller variants.
    packed: Option<Box<PackedWeights>>,
}

impl Conv {
    /// Loads `{conv}.weight` (and `{conv}.bias` if the spec has one), folds the optional batch
    /// norm into them and lays the weight out for the NHWC kernels.
    pub(crate) fn load(
        weights: &Weights,
        conv: &str,
        bn: Option<BatchNorm<'_>>,
        spec: ConvSpec,
    ) -> Result<Self, ModelError> {
        let ConvSpec {
            c_in,
            c_out,
            kernel: k,
            groups,
            ..
        } = spec;
        let kind = match groups {
            1 => ConvKind::Dense,
            g if g == c_in && g == c_out => ConvKind::Depthwise,
            g => {
                return Err(ModelError::Unsupported(format!(
                    "`{conv}`: grouped convolution with {g} groups over {c_in} -> {c_out} channels"
                )))
            }
        };
        let c_in_per_group = c_in / groups;
        let w = weights.get(&format!("{conv}.weight"), &[c_out, c_in_per_group, k, k])?;
        let bias = spec
            .has_bias
            .then(|| weights.get(&format!("{conv}.bias"), &[c_out]))
            .transpose()?;
        let bn = bn
            .map(|bn| load_batch_norm(weights, bn, c_out))
            .transpose()?;
        Self::from_torch(&w, bias.as_ref(), bn, spec, kind)
    }

    /// A linear layer on the channels of every pixel (`{prefix}.weight` `(out, in)`,
    /// `{prefix}.bias`) as a 1x1 convolution, so token-wise layers (transformer MLPs and
    /// projections) run on the packed dense kernel.
    pub(crate) fn load_linear(
        weights: &Weights,
        prefix: &str,
        (c_in, c_out): (usize, usize),
        activation: Activation,
    ) -> Result<Self, ModelError> {
        let w = weights.get(&format!("{prefix}.weight"), &[c_out, c_in])?;
        let bias = weights.get(&format!("{prefix}.bias"), &[c_out])?;
        Ok(Self::pointwise(
            &w.flatten_all()?.to_vec1::<f32>()?,
            bias.to_vec1::<f32>()?,
            c_in,
            activation,
        ))
    }

    /// A 1x1 convolution from a row-major `(c_out, c_in)` weight and its bias.
    pub(crate) fn pointwise(
        weight_out_in: &[f32],
        bias: Vec<f32>,
        c_in: usize,
        activation: Activation,
    ) -> Self {
        let c_out = bias.len();
        // (c_out, c_in) -> (c_in, c_out): the kernels read rows of output channels.
        let mut weight = vec![0.0f32; c_in * c_out];
        for (o, row) in weight_out_in.chunks_exact(c_in).enumerate() {
            for (i, w) in row.iter().enumerate() {
                weight[i * c_out + o] = *w;
            }
        }
        Self::dense(
            ConvGeometry::square(1, 1, 0),
            weight,
            bias,
            c_in,
            activation,
        )
    }

    /// A dense convolution from its `[kh * kw * c_in, c_out]` weight rows. With a vector
    /// kernel on this CPU only the packed copy is kept: two copies of every weight would
    /// double a model's resident memory (ResNet-50: 100 MB).
    fn dense(
        geometry: ConvGeometry,
        weight: Vec<f32>,
        bias: Vec<f32>,
        c_in: usize,
        activation: Activation,
    ) -> Self {
        let (k, c_out) = (weight.len() / bias.len().max(1), bias.len());
        let bf16 = precision::packing() == Precision::Bf16;
        let packed = PackedWeights::pack(k, c_out, &weight)
            .map(|p| if bf16 { p.with_bf16(&weight, c_in) } else { p })
            .map(Box::new);
        Conv {
            geometry,
            kind: ConvKind::Dense,
            weight: if packed.is_some() { Vec::new() } else { weight },
            bias,
            c_in,
            activation,
            packed,
        }
    }

    /// Lays out a PyTorch weight (`(c_out, c_in / groups, k, k)`, or `(c_out, c_in)` for
    /// k = 1) for the NHWC kernels, folding in the batch norm's `(scale, shift)`.
    fn from_torch(
        w: &Tensor,
        bias: Option<&Tensor>,
        bn: Option<(Vec<f32>, Vec<f32>)>,
        spec: ConvSpec,
        kind: ConvKind,
    ) -> Result<Self, ModelError> {
        let ConvSpec {
            c_in,
            c_out,
            kernel: k,
            ..
        } = spec;
        let w = w.flatten_all()?.to_vec1::<f32>()?;
        let mut bias = match bias {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; c_out],
        };
        let mut scale = vec![1.0f32; c_out];
        if let Some((s, shift)) = bn {
            for o in 0..c_out {
                bias[o] = bias[o] * s[o] + shift[o];
            }
            scale = s;
        }
        let taps = k * k;
        let mut weight = vec![0.0f32; w.len()];
        match kind {
            ConvKind::Dense => {
                // (c_out, c_in, ky, kx) -> ((ky, kx, c_in), c_out)
                for o in 0..c_out {
                    for i in 0..c_in {
                        for t in 0..taps {
                            weight[(t * c_in + i) * c_out + o] =
                                w[(o * c_in + i) * taps + t] * scale[o];
                        }
                    }
                }
            }
            ConvKind::Depthwise => {
                // (c, 1, ky, kx) -> ((ky, kx), c)
                for o in 0..c_out {
                    for t in 0..taps {
                        weight[t * c_out + o] = w[o * taps + t] * scale[o];
                    }
                }
            }
        }
        let geometry = ConvGeometry {
            kernel: (k, k),
            stride: (spec.stride, spec.stride),
            dilation: (spec.dilation, spec.dilation),
            padding: spec.padding,
        };
        Ok(match kind {
            ConvKind::Dense => Self::dense(geometry, weight, bias, c_in, spec.activation),
            ConvKind::Depthwise => Conv {
                geometry,
                kind,
                weight,
                bias,
                c_in,
                activation: spec.activation,
                packed: None,
            },
        })
    }

    /// Output channels.
    pub(crate) fn c_out(&self) -> usize {
        self.bias.len()
    }

    /// A 1x1 dense convolution's `(c_in, c_out)` row-major weight (batch norm folded in) and
    /// its bias, for composing it with its neighbours at load; `None` for any other kind.
    pub(crate) fn pointwise_matrix(&self) -> Option<(Cow<'_, [f32]>, &[f32])> {
        let params = self.dense_params();
        let pointwise = self.kind == ConvKind::Dense
            && self.geometry.kernel == (1, 1)
            && self.geometry.stride == (1, 1)
            && params.weight_len() == self.c_in * self.bias.len();
        let weight = match &self.packed {
            Some(packed) => Cow::Owned(packed.unpack()),
            None => Cow::Borrowed(&self.weight[..]),
        };
        pointwise.then_some((weight, &self.bias[..]))
    }

    /// `(n, h, w, c_in)` -> `(n, h', w', c_out)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.apply_op1_no_bwd(self)
    }

    /// `activation(conv(xs) + residual)`: the residual add of ResNet and MBConv blocks fused
    /// into the convolution's output pass (dense convolutions only).
    pub(crate) fn forward_add(
        &self,
        xs: &Tensor,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        xs.apply_op2_no_bwd(residual, &ResidualConv(self))
    }

    /// Runs a dense convolution on a raw NHWC slice into `out`, which may be a channel slice
    /// of a wider buffer (`row_stride` > `c_out`): lets an architecture that manages its own
    /// buffers (DenseNet's in-place concatenation) skip the tensor round trip. Every size is
    /// checked here, so a bad shape is an error rather than a panic inside the kernel.
    pub(crate) fn run_into(
        &self,
        input: &[f32],
        shape: Nhwc,
        out: ConvOutput<'_>,
    ) -> candle_core::Result<Nhwc> {
        let out_shape = self.output_shape(shape)?;
        if self.kind != ConvKind::Dense {
            candle_core::bail!("writing into a strided buffer needs a dense convolution")
        }
        let (rows, c_out) = (out_shape.pixels(), out_shape.c);
        let needed = match rows {
            0 => 0,
            r => (r - 1) * out.row_stride + c_out,
        };
        if input.len() < shape.len() || out.row_stride < c_out || out.data.len() < needed {
            candle_core::bail!(
                "convolution buffers too small: input {} for {shape:?}, output {} for {rows} \
                 rows of {c_out} channels {} apart",
                input.len(),
                out.data.len(),
                out.row_stride
            )
        }
        if out.residual.is_some_and(|r| r.len() < rows * c_out) {
            candle_core::bail!("residual too small for {out_shape:?}")
        }
        dense_conv(input, shape, &self.dense_params(), out);
        Ok(out_shape)
    }

    fn dense_params(&self) -> DenseParams<'_> {
        DenseParams {
            geometry: &self.geometry,
            weight: &self.weight,
            bias: &self.bias,
            activation: self.activation,
            packed: self.packed.as_deref(),
        }
    }

    fn depthwise_params(&self) -> DepthwiseParams<'_> {
        DepthwiseParams {
            geometry: &self.geometry,
            weight: &self.weight,
            bias: &self.bias,
            activation: self.activation,
        }
    }

    fn output_shape(&self, shape: Nhwc) -> candle_core::Result<Nhwc> {
        if shape.c != self.c_in {
            candle_core::bail!(
                "convolution expects {} input channels, got {}",
                self.c_in,
                shape.c
            )
        }
        let Some(res) = self.geometry.resolve(shape.h, shape.w) else {
            candle_core::bail!(
                "input of {}x{} pixels is smaller than a {}x{} convolution window",
                shape.h,
                shape.w,
                self.geometry.kernel.0,
                self.geometry.kernel.1
            )
        };
        Ok(Nhwc {
            n: shape.n,
            h: res.out_h,
            w: res.out_w,
            c: self.c_out(),
        })
    }

    fn run(
        &self,
        input: &[f32],
        shape: Nhwc,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        let out_shape = self.output_shape(shape)?;
        if input.len() < shape.len() {
            candle_core::bail!(
                "convolution input holds {} values for {shape:?}",
                input.len()
            )
        }
        let out = match self.kind {
            ConvKind::Dense => {
                if residual.is_some_and(|r| r.len() < out_shape.len()) {
                    candle_core::bail!("residual too small for {out_shape:?}")
                }
                dense_conv_new(input, shape, &self.dense_params(), residual)
            }
            ConvKind::Depthwise => {
                if residual.is_some() {
                    candle_core::bail!("a fused residual needs a dense convolution")
                }
                depthwise_conv_new(input, shape, &self.depthwise_params())
            }
        };
        Ok((out, nhwc_shape(out_shape)))
    }
}

impl CustomOp1 for Conv {
    fn name(&self) -> &'static str {
        "wick-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (input, shape) = nhwc_slice(storage, layout)?;
        let (out, shape) = self.run(input, shape, None)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

struct ResidualConv<'a>(&'a Conv);

impl CustomOp2 for ResidualConv<'_> {
    fn name(&self) -> &'static str {
        "wick-conv-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (input, shape) = nhwc_slice(s1, l1)?;
        let (residual, residual_shape) = nhwc_slice(s2, l2)?;
        let out_shape = self.0.output_shape(shape)?;
        if residual_shape != out_shape {
            candle_core::bail!(
                "residual {residual_shape:?} does not match the convolution output {out_shape:?}"
            )
        }
        let (out, out_shape) = self.0.run(input, shape, Some(residual))?;
        Ok((CpuStorage::F32(out), out_shape))
    }
}

fn nhwc_shape(s: Nhwc) -> Shape {
    Shape::from((s.n, s.h, s.w, s.c))
}

/// The contiguous f32 data of a 4-D tensor and its NHWC shape.
fn nhwc_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(&'a [f32], Nhwc)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("NHWC kernels take f32 tensors")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("NHWC kernels take contiguous tensors")
    };
    let (n, h, w, c) = layout.shape().dims4()?;
    Ok((&data[start..end], Nhwc { n, h, w, c }))
}

/// Runs `f` on the NHWC data of `xs` and wraps its output in a tensor.
pub(crate) fn map_nhwc<F>(xs: &Tensor, name: &'static str, f: F) -> candle_core::Result<Tensor>
where
    F: Fn(&[f32], Nhwc) -> candle_core::Result<(Vec<f32>, Shape)>,
{
    struct SliceOp<F> {
        name: &'static str,
        f: F,
    }
    impl<F> CustomOp1 for SliceOp<F>
    where
        F: Fn(&[f32], Nhwc) -> candle_core::Result<(Vec<f32>, Shape)>,
    {
        fn name(&self) -> &'static str {
            self.name
        }
        fn cpu_fwd(
            &self,
            storage: &CpuStorage,
            layout: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let (input, shape) = nhwc_slice(storage, layout)?;
            let (out, shape) = (self.f)(input, shape)?;
            Ok((CpuStorage::F32(out), shape))
        }
    }
    xs.apply_op1_no_bwd(&SliceOp { name, f })
}

/// `MaxPool2d` on an NHWC tensor.
pub(crate) fn max_pool(xs: &Tensor, geometry: ConvGeometry) -> candle_core::Result<Tensor> {
    map_nhwc(xs, "wick-max-pool", |input, shape| {
        let Some(res) = geometry.resolve(shape.h, shape.w) else {
            candle_core::bail!(
                "input of {}x{} pixels is smaller than the pooling window",
                shape.h,
                shape.w
            )
        };
        let out_shape = Nhwc {
            h: res.out_h,
            w: res.out_w,
            ..shape
        };
        let mut out = vec![0.0f32; out_shape.len()];
        kernels::max_pool(input, shape, &geometry, &mut out);
        Ok((out, nhwc_shape(out_shape)))
    })
}

/// Nearest-neighbour upsampling by `factor` along both axes.
pub(crate) fn upsample_nearest(xs: &Tensor, factor: usize) -> candle_core::Result<Tensor> {
    map_nhwc(xs, "wick-upsample-nearest", |input, shape| {
        let out_shape = Nhwc {
            h: shape.h * factor,
            w: shape.w * factor,
            ..shape
        };
        let mut out = vec![0.0f32; out_shape.len()];
        kernels::upsample_nearest(input, shape, factor, &mut out);
        Ok((out, nhwc_shape(out_shape)))
    })
}

/// Global average pooling: `(n, h, w, c)` -> `(n, c)`.
pub(crate) fn global_avg_pool(xs: &Tensor) -> candle_core::Result<Tensor> {
    map_nhwc(xs, "wick-global-avg-pool", |input, shape| {
        Ok((
            kernels::global_avg_pool(input, shape),
            Shape::from((shape.n, shape.c)),
        ))
    })
}

/// `xs * gate`, where `gate` is `(n, 1, 1, c)`: one factor per image and channel
/// (LR-ASPP's scale branch; squeeze-excitation applies its gate inside the projection,
/// `Conv::forward_gated`).
pub(crate) fn scale_channels(xs: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    let gate = gate_factors(xs, gate)?;
    map_nhwc(xs, "wick-scale-channels", |input, shape| {
        Ok((
            kernels::gate_channels(input, shape, &gate),
            nhwc_shape(shape),
        ))
    })
}

/// The `(n, 1, 1, c)` gate of `(n, h, w, c)` maps as `n * c` factors, checked.
fn gate_factors(xs: &Tensor, gate: &Tensor) -> candle_core::Result<Vec<f32>> {
    let (n, _, _, c) = xs.dims4()?;
    let gate = gate.flatten_all()?.to_vec1::<f32>()?;
    if gate.len() != n * c {
        candle_core::bail!(
            "channel gate has {} values for {n} images of {c} channels",
            gate.len()
        )
    }
    Ok(gate)
}

/// `(n, c, h, w)` -> contiguous `(n, h, w, c)` f32.
pub fn to_nhwc(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let planes = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Tensor::from_vec(
        kernels::nchw_to_nhwc(&planes, n, c, h * w),
        (n, h, w, c),
        xs.device(),
    )
}
