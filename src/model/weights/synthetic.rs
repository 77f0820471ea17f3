//! Deterministic synthetic weights for parity tests and benchmarks.
//!
//! The formula is shared with a Python generator: both must agree bit for bit,
//! so all mixing is wrapping u64 arithmetic, scaling is f64, and the only
//! rounding is the final cast to f32.

use candle_core::{Device, Tensor};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The i-th (0-based) uniform draw in [0, 1) of the stream seeded by `seed`
/// (SplitMix64 finaliser, top 24 bits).
fn uniform(seed: u64, i: u64) -> f64 {
    let mut z = seed.wrapping_add((i.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f64 / (1u64 << 24) as f64
}

/// The values [`synthesize`] puts in the tensor, row-major.
pub(crate) fn synthesize_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let seed = fnv1a(name.as_bytes());
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let fan_in = match shape {
        [rows, _, ..] if *rows > 0 => numel / rows,
        _ => numel,
    };
    // Uniform with the variance of Kaiming-uniform-ish init, so activations
    // of synthetic networks neither vanish nor explode.
    let scale = (3.0 / fan_in.max(1) as f64).sqrt();
    (0..numel as u64)
        .map(|i| {
            let u = uniform(seed, i);
            let s = 2.0 * u - 1.0;
            let v = match leaf {
                "running_var" => 0.5 + u,
                "running_mean" | "bias" => 0.1 * s,
                "weight" if shape.len() == 1 => 1.0 + 0.25 * s,
                _ if name == "input" => s,
                _ => s * scale,
            };
            v as f32
        })
        .collect()
}

/// A deterministic f32 CPU tensor for parameter `name` of `shape`: the
/// formula depends only on the name, the shape, and the leaf after the last
/// `.` (batch-norm statistics and biases get plausible ranges, `input` is
/// uniform in [-1, 1), other tensors are scaled by `sqrt(3 / fan_in)`).
pub fn synthesize(name: &str, shape: &[usize]) -> Tensor {
    let values = synthesize_values(name, shape);
    // The element count equals the shape's product by construction, and CPU
    // tensor creation has no other failure mode.
    match Tensor::from_vec(values, shape, &Device::Cpu) {
        Ok(t) => t,
        Err(e) => unreachable!("synthesize({name}, {shape:?}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(name: &str, shape: &[usize]) -> Vec<u32> {
        synthesize_values(name, shape)
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Expected bits from the Python formula:
    /// python3 -c "import math,struct,functools as F;M=2**64-1;mx=lambda z:(lambda z:(lambda z:z^(z>>31))((z^(z>>27))*0x94D049BB133111EB&M))((z^(z>>30))*0xBF58476D1CE4E5B9&M);val=lambda nm,sh,u,s,l:0.5+u if l=='running_var' else 0.1*s if l in('running_mean','bias') else 1+0.25*s if l=='weight' and len(sh)==1 else s if nm=='input' else s*math.sqrt(3/(math.prod(sh)//(sh[0] if len(sh)>1 else 1)));syn=lambda nm,sh:[hex(struct.unpack('<I',struct.pack('<f',val(nm,sh,u,2*u-1,nm.rsplit('.',1)[-1])))[0]) for u in [(mx((F.reduce(lambda h,b:(h^b)*0x100000001b3&M,nm.encode(),0xcbf29ce484222325)+(i+1)*0x9E3779B97F4A7C15)&M)>>40)/2**24 for i in range(math.prod(sh))]];[print(syn(*a)) for a in [('conv.weight',[2,3,1,1]),('bn.running_var',[3]),('bn.weight',[2]),('fc.bias',[2]),('input',[1,2]),('x',[]),('bn.running_mean',[2]),('weight',[2])]]"
    #[test]
    fn matches_the_python_formula() {
        let cases: &[(&str, &[usize], &[u32])] = &[
            (
                "conv.weight",
                &[2, 3, 1, 1],
                &[
                    0xbf1f4ca0, 0x3ea3ebfc, 0x3f3a6dda, 0x3e581d70, 0x3f1117aa, 0x3f52cfcc,
                ],
            ),
            (
                "bn.running_var",
                &[3],
                &[0x3fae4ad8, 0x3f5d2f34, 0x3f2366bb],
            ),
            ("bn.weight", &[2], &[0x3f85126e, 0x3f6c593a]),
            ("fc.bias", &[2], &[0xbb9276e6, 0xbb7c8d66]),
            ("input", &[1, 2], &[0xbf4deac2, 0x3e9c045c]),
            ("x", &[], &[0xbf847c5b]),
            ("bn.running_mean", &[2], &[0x3dad7c0a, 0x3cf7b25a]),
            ("weight", &[2], &[0x3f46e590, 0x3f7047cc]),
        ];
        for (name, shape, want) in cases {
            assert_eq!(bits(name, shape), *want, "{name} {shape:?}");
        }
    }

    #[test]
    fn tensor_has_shape_and_is_deterministic() {
        let a = synthesize("_blocks.0._depthwise_conv.weight", &[32, 1, 3, 3]);
        assert_eq!(a.dims(), &[32, 1, 3, 3]);
        let b = synthesize("_blocks.0._depthwise_conv.weight", &[32, 1, 3, 3]);
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a[0].to_bits(), 0xbd798f7d);
        assert!(synthesize("empty", &[0, 4]).dims() == [0, 4]);
    }
}
