//! Element types of checkpoint storages and the strided gather that turns a
//! (storage, offset, size, stride) view into a dense row-major `Vec<f32>`.

use half::{bf16, f16};

/// A checkpoint element type: its width, and how to widen it to f32 if it
/// is a floating-point type we load (other types are skipped, not failed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dtype {
    pub(crate) size: usize,
    pub(crate) float: Option<Float>,
}

/// The floating-point element types that become f32 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Float {
    F32,
    F16,
    Bf16,
    F64,
}

impl Dtype {
    const fn float(f: Float) -> Self {
        Dtype {
            size: f.size(),
            float: Some(f),
        }
    }

    const fn other(size: usize) -> Self {
        Dtype { size, float: None }
    }

    /// Raw bytes, as in an `UntypedStorage`.
    pub(crate) const BYTE: Dtype = Dtype::other(1);

    /// From a legacy typed-storage class name such as `FloatStorage`.
    pub(crate) fn from_storage_class(class: &str) -> Option<Dtype> {
        Some(match class {
            "FloatStorage" => Dtype::float(Float::F32),
            "HalfStorage" => Dtype::float(Float::F16),
            "BFloat16Storage" => Dtype::float(Float::Bf16),
            "DoubleStorage" => Dtype::float(Float::F64),
            "LongStorage" | "ComplexFloatStorage" => Dtype::other(8),
            "IntStorage" | "QInt32Storage" => Dtype::other(4),
            "ShortStorage" => Dtype::other(2),
            "ComplexDoubleStorage" => Dtype::other(16),
            "CharStorage" | "ByteStorage" | "BoolStorage" | "QInt8Storage" | "QUInt8Storage"
            | "QUInt4x2Storage" | "QUInt2x4Storage" | "UntypedStorage" => Dtype::other(1),
            _ => return None,
        })
    }

    /// From a `torch.<dtype>` global, as `_rebuild_tensor_v3` passes it.
    pub(crate) fn from_torch_dtype(name: &str) -> Option<Dtype> {
        Some(match name {
            "float32" | "float" => Dtype::float(Float::F32),
            "float16" | "half" => Dtype::float(Float::F16),
            "bfloat16" => Dtype::float(Float::Bf16),
            "float64" | "double" => Dtype::float(Float::F64),
            "int64" | "long" | "uint64" | "complex64" | "cfloat" => Dtype::other(8),
            "int32" | "int" | "uint32" | "qint32" => Dtype::other(4),
            "int16" | "short" | "uint16" | "complex32" | "chalf" => Dtype::other(2),
            "complex128" | "cdouble" => Dtype::other(16),
            "int8" | "uint8" | "bool" | "qint8" | "quint8" | "quint4x2" | "quint2x4"
            | "float8_e4m3fn" | "float8_e5m2" | "float8_e4m3fnuz" | "float8_e5m2fnuz"
            | "float8_e8m0fnu" => Dtype::other(1),
            _ => return None,
        })
    }
}

impl Float {
    /// Bytes per element.
    pub(crate) const fn size(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F16 | Float::Bf16 => 2,
            Float::F64 => 8,
        }
    }

    /// Widens one element; `b` holds exactly the element's bytes (little-endian).
    fn decode(self, b: &[u8]) -> f32 {
        match (self, b) {
            (Float::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
            (Float::F16, &[a, b]) => f16::from_le_bytes([a, b]).to_f32(),
            (Float::Bf16, &[a, b]) => bf16::from_le_bytes([a, b]).to_f32(),
            (Float::F64, &[a, b, c, d, e, f, g, h]) => {
                f64::from_le_bytes([a, b, c, d, e, f, g, h]) as f32
            }
            // Callers slice by `Dtype::size`, so widths always match.
            _ => f32::NAN,
        }
    }
}

/// Why a view does not fit its storage.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GatherError {
    /// The view reaches element `needed - 1`; the storage has `available`.
    OutOfRange { needed: u64, available: u64 },
    /// Sizes, strides or offset overflow, or their ranks differ.
    BadLayout(String),
}

/// Number of elements of `size`, or `None` on overflow.
pub(crate) fn numel(size: &[usize]) -> Option<usize> {
    size.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Converts the contiguous little-endian `bytes` (whole elements) to f32.
pub(crate) fn convert(bytes: &[u8], float: Float, size: usize) -> Vec<f32> {
    bytes.chunks_exact(size).map(|b| float.decode(b)).collect()
}

/// Copies the view `offset + Σ index[d] * stride[d]` of `storage` (elements
/// of `float`, `elem` bytes each) into a row-major vector.
///
/// Every index the view can reach is checked against the storage up front,
/// so a corrupt layout is an error rather than a panic or a wild read.
pub(crate) fn gather(
    storage: &[u8],
    float: Float,
    elem: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
) -> Result<Vec<f32>, GatherError> {
    if size.len() != stride.len() {
        return Err(GatherError::BadLayout(format!(
            "size has {} dims but stride has {}",
            size.len(),
            stride.len()
        )));
    }
    let overflow = || GatherError::BadLayout("layout overflows".into());
    let n = numel(size).ok_or_else(overflow)?;
    let available = (storage.len() / elem) as u64;
    if n == 0 {
        return Ok(Vec::new());
    }
    // Largest reachable element index; strides are unsigned, so it is the
    // sum of the last index of each dimension times its stride.
    let mut last = offset;
    for (&d, &s) in size.iter().zip(stride) {
        let reach = (d - 1).checked_mul(s).ok_or_else(overflow)?;
        last = last.checked_add(reach).ok_or_else(overflow)?;
    }
    let needed = last as u64 + 1;
    if needed > available {
        return Err(GatherError::OutOfRange { needed, available });
    }

    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&d, &s) in size.iter().zip(stride).rev() {
            if d != 1 && s != expect {
                ok = false;
                break;
            }
            expect *= d;
        }
        ok
    };
    if contiguous {
        let start = offset * elem;
        return Ok(convert(&storage[start..start + n * elem], float, elem));
    }

    // Odometer over all but the innermost dimension; the innermost run is a
    // plain strided loop. Scalars have no dimensions: treat as one run of 1.
    let rank = size.len();
    let (inner_len, inner_stride) = match rank {
        0 => (1, 0),
        _ => (size[rank - 1], stride[rank - 1]),
    };
    let outer = &size[..rank.saturating_sub(1)];
    let outer_stride = &stride[..rank.saturating_sub(1)];
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; outer.len()];
    let mut base = offset;
    loop {
        let mut at = base;
        for _ in 0..inner_len {
            let b = &storage[at * elem..(at + 1) * elem];
            out.push(float.decode(b));
            at = at.wrapping_add(inner_stride);
        }
        // Advance the odometer; all positions were bounds-checked above.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            // Wrapping: a stride on a size-1 dimension is never applied
            // in range and may be arbitrarily large; it is undone below.
            index[d] += 1;
            base = base.wrapping_add(outer_stride[d]);
            if index[d] < outer[d] {
                break;
            }
            base = base.wrapping_sub(outer_stride[d].wrapping_mul(outer[d]));
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn transposed_view_is_gathered_row_major() {
        // storage [[0,1,2],[3,4,5]] viewed transposed: shape [3,2], stride [1,3].
        let s = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        let v = gather(&s, Float::F32, 4, 0, &[3, 2], &[1, 3]).unwrap();
        assert_eq!(v, [0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn offset_and_row_stride() {
        let s = f32_bytes(&(0..20).map(|i| i as f32).collect::<Vec<_>>());
        // rows 1..3, cols 1..3 of a 4x5 matrix.
        let v = gather(&s, Float::F32, 4, 6, &[2, 2], &[5, 1]).unwrap();
        assert_eq!(v, [6., 7., 11., 12.]);
    }

    #[test]
    fn scalar_and_empty_and_broadcast() {
        let s = f32_bytes(&[7., 8.]);
        assert_eq!(gather(&s, Float::F32, 4, 1, &[], &[]).unwrap(), [8.]);
        assert!(gather(&s, Float::F32, 4, 99, &[0, 3], &[3, 1])
            .unwrap()
            .is_empty());
        // An expanded (stride 0) view.
        assert_eq!(
            gather(&s, Float::F32, 4, 0, &[2, 3], &[1, 0]).unwrap(),
            [7., 7., 7., 8., 8., 8.]
        );
    }

    #[test]
    fn out_of_range_and_overflow_are_errors() {
        let s = f32_bytes(&[0.; 6]);
        assert_eq!(
            gather(&s, Float::F32, 4, 1, &[2, 3], &[3, 1]),
            Err(GatherError::OutOfRange {
                needed: 7,
                available: 6
            })
        );
        assert!(matches!(
            gather(&s, Float::F32, 4, 0, &[usize::MAX, 2], &[usize::MAX, 1]),
            Err(GatherError::BadLayout(_))
        ));
        assert!(matches!(
            gather(&s, Float::F32, 4, 0, &[2], &[1, 1]),
            Err(GatherError::BadLayout(_))
        ));
    }

    #[test]
    fn half_types_widen_exactly() {
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(convert(&h, Float::F16, 2), [1.5, -2.0]);
        let b: Vec<u8> = [0.15625f32, 3.0]
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(
            gather(&b, Float::Bf16, 2, 0, &[2], &[1]).unwrap(),
            [0.15625, 3.0]
        );
        let d: Vec<u8> = [0.1f64].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(convert(&d, Float::F64, 8), [0.1f32]);
    }
}
