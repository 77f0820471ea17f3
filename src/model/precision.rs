//! The number format a model's dense convolutions multiply in: f32 (the default, PyTorch's
//! numbers to rounding) or, opt-in, bf16 products with f32 sums on CPUs with AVX512-BF16.
//!
//! The choice is made once, when a model loads, because it decides how the weights are packed:
//! with bf16 each dense layer whose input has an even number of channels keeps a
//! second, bf16 copy of its weights beside the f32 one, and its kernel rounds the input to bf16
//! as it gathers each tile (see `kernels/dense/bf16.rs`). The sums, the bias, the residual, the
//! activations, depthwise and attention layers and everything after the network stay f32.
//!
//! The precision reaches the packing code as a scoped setting of the loading thread
//! ([`while_loading`]) instead of a parameter of every architecture's constructor: packing is
//! the only reader, and a thread-local keeps a test that loads in bf16 from changing the models
//! other tests load at the same time.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// The format of the dense convolutions' products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout: the default.
    #[default]
    F32,
    /// bf16 products, f32 sums (AVX512-BF16 only; f32 elsewhere).
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("precision must be `f32` or `bf16`, got `{other}`")),
        }
    }
}

/// Whether this CPU multiplies bf16 pairs (AVX512-BF16), which the bf16 kernel needs.
pub fn bf16_supported() -> bool {
    super::kernels::bf16_supported()
}

/// The precision a request for `requested` gets on this CPU: bf16 falls back to f32, with
/// one warning, where the CPU cannot multiply bf16.
pub fn effective(requested: Precision) -> Precision {
    if requested == Precision::Bf16 && !bf16_supported() {
        tracing::warn!("precision bf16 requested, but this CPU has no AVX512-BF16: running in f32");
        return Precision::F32;
    }
    requested
}

thread_local! {
    static PACKING: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Runs `load` with the dense layers it builds on this thread packed for `precision` (as
/// [`effective`] resolves it); the setting ends with the call, even if `load` panics.
pub fn while_loading<T>(precision: Precision, load: impl FnOnce() -> T) -> T {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            PACKING.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PACKING.with(|p| p.replace(effective(precision))));
    load()
}

/// The precision dense layers built now on this thread are packed for.
pub(crate) fn packing() -> Precision {
    PACKING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_as_config_json_writes_them() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("`fp16`") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn the_setting_is_scoped_to_the_load_and_falls_back_without_the_instructions() {
        assert_eq!(packing(), Precision::F32);
        let inside = while_loading(Precision::Bf16, packing);
        let expected = if bf16_supported() {
            Precision::Bf16
        } else {
            Precision::F32
        };
        assert_eq!(inside, expected);
        assert_eq!(packing(), Precision::F32, "restored after the load");
        let unwound =
            std::panic::catch_unwind(|| while_loading(Precision::Bf16, || panic!("a failed load")));
        assert!(unwound.is_err());
        assert_eq!(packing(), Precision::F32, "restored after a panic");
    }
}
