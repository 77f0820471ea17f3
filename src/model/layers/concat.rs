//! `Conv::forward_concat`: a 1x1 convolution over the channel concatenation of several maps
//! without writing the concatenation (`kernels::dense_conv_concat_new`). Each map is read
//! where it lies, a channel slice of a wider map (`Tensor::narrow` on the channels) included.

use candle_core::{CpuStorage, Device, Storage, Tensor};

use super::{Conv, ConvKind};
use crate::model::kernels::{dense_conv_concat_new, Nhwc, Part};

impl Conv {
    /// `conv(cat(parts, channels))` for a dense 1x1 convolution. Parts of unequal widths go
    /// through a concatenated copy.
    pub(crate) fn forward_concat(&self, parts: &[&Tensor]) -> candle_core::Result<Tensor> {
        let Some(first) = parts.first() else {
            candle_core::bail!("a concatenation needs at least one map")
        };
        let (n, h, w, c) = first.dims4()?;
        let same_width = parts
            .iter()
            .all(|p| p.dims4().is_ok_and(|d| d == (n, h, w, c)));
        let pointwise = self.geometry.kernel == (1, 1) && self.geometry.stride == (1, 1);
        if !same_width || !pointwise || self.kind != ConvKind::Dense {
            return self.forward(&Tensor::cat(parts, 3)?);
        }
        if parts.len() * c != self.c_in {
            candle_core::bail!(
                "convolution expects {} input channels, got {} maps of {c}",
                self.c_in,
                parts.len()
            )
        }
        let guards: Vec<_> = parts.iter().map(|p| p.storage_and_layout()).collect();
        let mut views = Vec::with_capacity(parts.len());
        for (storage, layout) in &guards {
            let Storage::Cpu(CpuStorage::F32(data)) = &**storage else {
                candle_core::bail!("NHWC kernels take f32 tensors on the CPU")
            };
            match pixel_stride(layout.stride(), (n, h, w, c)) {
                Some(stride) => views.push(Part {
                    data: &data[layout.start_offset()..],
                    stride,
                }),
                None => {
                    drop(views);
                    drop(guards);
                    return self.forward(&Tensor::cat(parts, 3)?);
                }
            }
        }
        let shape = Nhwc { n, h, w, c };
        let out = dense_conv_concat_new(&views, shape, &self.dense_params());
        drop(views);
        drop(guards);
        Tensor::from_vec(out, (n, h, w, self.c_out()), &Device::Cpu)
    }
}

/// The distance between pixels of a map laid out pixel-major (a whole NHWC map, or a channel
/// slice of a wider one), else `None`.
fn pixel_stride(stride: &[usize], (n, h, w, c): (usize, usize, usize, usize)) -> Option<usize> {
    let [s0, s1, s2, s3] = stride else {
        return None;
    };
    let rows_ok = h <= 1 || *s1 == w * s2;
    let images_ok = n <= 1 || *s0 == h * w * s2;
    (*s3 == 1 && *s2 >= c && rows_ok && images_ok).then_some(*s2)
}
