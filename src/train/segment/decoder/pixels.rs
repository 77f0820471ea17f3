//! The decoders' features are `(batch, pixels, channels)`: a 1x1 convolution is one matrix
//! product over every pixel of the batch. Shared by the layers (`params.rs`), the dense 3x3
//! convolution (`im2col.rs`) and the ASPP and LR-ASPP heads.

use candle_core::Tensor;

/// `(b, p, c_in)` times `(c_in, c_out)` as one matrix product over every pixel of the batch.
pub(super) fn matmul_pixels(x: &Tensor, m: &Tensor) -> candle_core::Result<Tensor> {
    let (b, p, c) = x.dims3()?;
    x.reshape((b * p, c))?.matmul(m)?.reshape((b, p, m.dim(1)?))
}
