//! `hyperparameters.json` → typed [`Hyperparameters`] with defaults.
//!
//! SageMaker passes a flat object of strings. The Python SDK's framework estimators JSON-encode
//! every value (`"\"resnet\""`, `"10"`, `"true"`) while older SDKs and raw API callers send plain
//! strings (`"resnet"`, `"False"`), so each value is JSON-decoded when it can be and kept as the
//! raw string otherwise, then coerced to the key's declared type: booleans accept
//! `true`/`True`/`1`, numbers accept `1e-3`. Unknown keys (the tuner injects
//! `_tuning_objective_metric`) are reported, never fatal. A bad value names the key, the value
//! and what was expected. See `../shared/docs/sagemaker-contract.md` item 41.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::model::segment::Trainable;

mod segmentation;

/// What a hyperparameter file or value can get wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HyperparameterError {
    /// The file is not a JSON object.
    #[error("`{path}` is not a JSON object of hyperparameters: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// What serde found wrong.
        cause: serde_json::Error,
    },
    /// A value cannot be coerced to the key's type or is out of range.
    #[error("hyperparameter `{key}`: expected {expected} (given: {value})")]
    Invalid {
        /// The key, e.g. `epochs`.
        key: String,
        /// What the key accepts.
        expected: String,
        /// The value as given.
        value: String,
    },
}

/// How the loss weighs the classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClassWeights {
    /// Every image counts the same.
    None,
    /// `n / (classes * n_c)`: each class contributes equally however many images it has.
    Balanced,
    /// One weight per class, in label order (class folder names sorted).
    Explicit(Vec<f64>),
}

/// What the job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TrainTask {
    /// A classification head on pooled features.
    Classification,
    /// A segmentation decoder on feature maps.
    Segmentation,
}

/// The typed hyperparameters of `wick train` (README "Training" lists them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Hyperparameters {
    /// Passes over the training set (at most; early stopping may end sooner).
    pub(crate) epochs: usize,
    /// AdamW learning rate.
    pub(crate) lr: f64,
    /// Images per optimizer step.
    pub(crate) batch_size: usize,
    /// AdamW decoupled weight decay.
    pub(crate) weight_decay: f64,
    /// Mass moved from the true class to all classes uniformly, in `[0, 1)`.
    pub(crate) label_smoothing: f64,
    /// Seed of every random choice: same seed, same data, same result.
    pub(crate) seed: u64,
    /// Epochs without a lower validation loss before training stops; 0 turns it off.
    pub(crate) patience: usize,
    /// Loss weights per class.
    pub(crate) class_weights: ClassWeights,
    /// Random crops and flips, features recomputed every epoch.
    pub(crate) augment: bool,
    /// Share of each class held out for validation when there is no `validation` channel.
    pub(crate) validation_fraction: f64,
    /// The backbone's model package, instead of the `model` channel.
    pub(crate) base_model: Option<PathBuf>,
    /// `classification` or `segmentation`; unset: segmentation when the base package is a
    /// segmentation package, else classification.
    pub(crate) task: Option<TrainTask>,
    /// Segmentation: class names in index order, from `label_map` or `classes`.
    pub(crate) labels: Option<Vec<String>>,
    /// Segmentation: training resolution `(height, width)`; unset: the package's input size,
    /// or 320x320 without one.
    pub(crate) image_size: Option<(usize, usize)>,
    /// Segmentation: the annotation value excluded from loss and metrics; `None` turns it off.
    pub(crate) ignore_index: Option<u8>,
    /// Segmentation: one sigmoid output (BCE) for a 2-class job; unset: as the base package.
    pub(crate) binary: Option<bool>,
    /// Segmentation: the whole decoder or only the final convolution(s).
    pub(crate) trainable: Trainable,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            epochs: 30,
            lr: 1e-3,
            batch_size: 32,
            weight_decay: 0.01,
            label_smoothing: 0.0,
            seed: 0,
            patience: 5,
            class_weights: ClassWeights::None,
            augment: false,
            validation_fraction: 0.2,
            base_model: None,
            task: None,
            labels: None,
            image_size: None,
            ignore_index: Some(255),
            binary: None,
            trainable: Trainable::Decoder,
        }
    }
}

/// The hyperparameters and the keys that were ignored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    /// The typed values, defaults filled in.
    pub(crate) hyperparameters: Hyperparameters,
    /// Keys wick does not know, sorted.
    pub(crate) unknown: Vec<String>,
    /// Keys the file set (a task may default a key differently when it is not given).
    pub(crate) given: BTreeSet<String>,
}

/// Parses the text of `hyperparameters.json`; `path` only names the file in errors.
pub(crate) fn parse_file(
    path: &std::path::Path,
    text: &str,
) -> Result<Parsed, HyperparameterError> {
    let map: BTreeMap<String, Value> =
        serde_json::from_str(text).map_err(|cause| HyperparameterError::File {
            path: path.to_path_buf(),
            cause,
        })?;
    parse(map)
}

/// Parses a SageMaker hyperparameter map (values normally strings; JSON values are accepted
/// too, as a hand-written local file may hold them).
pub(crate) fn parse(map: BTreeMap<String, Value>) -> Result<Parsed, HyperparameterError> {
    let given: BTreeSet<String> = map.keys().cloned().collect();
    let mut values: BTreeMap<String, (Value, String)> = map
        .into_iter()
        .map(|(key, value)| {
            let raw = match &value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (key, (decode(value), raw))
        })
        .collect();
    let mut take = |key: &str| values.remove(key).map(|v| Field { key: key.into(), v });
    let d = Hyperparameters::default();
    let hyperparameters = Hyperparameters {
        epochs: take("epochs").map_or(Ok(d.epochs), |f| f.int(1))?,
        lr: match (take("lr"), take("learning_rate")) {
            (Some(f), None) | (None, Some(f)) => f.float(Range::Positive)?,
            (None, None) => d.lr,
            (Some(f), Some(_)) => return Err(f.invalid("`lr` or `learning_rate`, not both")),
        },
        batch_size: take("batch_size").map_or(Ok(d.batch_size), |f| f.int(1))?,
        weight_decay: take("weight_decay")
            .map_or(Ok(d.weight_decay), |f| f.float(Range::NonNegative))?,
        label_smoothing: take("label_smoothing")
            .map_or(Ok(d.label_smoothing), |f| f.float(Range::Fraction))?,
        seed: take("seed").map_or(Ok(d.seed), |f| f.int(0).map(|s| s as u64))?,
        patience: take("patience").map_or(Ok(d.patience), |f| f.int(0))?,
        class_weights: take("class_weights").map_or(Ok(d.class_weights), |f| f.class_weights())?,
        augment: take("augment").map_or(Ok(d.augment), |f| f.bool())?,
        validation_fraction: take("validation_fraction")
            .map_or(Ok(d.validation_fraction), |f| f.float(Range::Fraction))?,
        base_model: take("base_model").map(|f| f.path()).transpose()?.flatten(),
        task: take("task").map(|f| f.task()).transpose()?,
        labels: match (take("label_map"), take("classes")) {
            (Some(f), None) => Some(f.label_map()?),
            (None, Some(f)) => Some(f.class_names()?),
            (None, None) => None,
            (Some(f), Some(_)) => return Err(f.invalid("`label_map` or `classes`, not both")),
        },
        image_size: take("image_size").map(|f| f.image_size()).transpose()?,
        ignore_index: take("ignore_index").map_or(Ok(d.ignore_index), |f| f.ignore_index())?,
        binary: take("binary").map(|f| f.bool()).transpose()?,
        trainable: take("trainable").map_or(Ok(d.trainable), |f| f.trainable())?,
    };
    let unknown: Vec<String> = values.into_keys().collect();
    let given = given.into_iter().filter(|k| !unknown.contains(k)).collect();
    Ok(Parsed {
        hyperparameters,
        unknown,
        given,
    })
}

/// The JSON decoding of a string value, or the raw string when it is not JSON.
fn decode(value: Value) -> Value {
    match value {
        Value::String(s) => serde_json::from_str(s.trim()).unwrap_or(Value::String(s)),
        other => other,
    }
}

/// Accepted range of a float.
#[derive(Clone, Copy)]
enum Range {
    /// > 0.
    Positive,
    /// >= 0.
    NonNegative,
    /// In [0, 1).
    Fraction,
}

/// One value being coerced: its key, the decoded value and the raw text for messages.
struct Field {
    key: String,
    v: (Value, String),
}

impl Field {
    fn invalid(&self, expected: &str) -> HyperparameterError {
        // A JSON-encoded string (`"\"ten\""`) is shown decoded, as the user wrote it.
        let shown = match &self.v.0 {
            Value::String(s) => s,
            _ => &self.v.1,
        };
        HyperparameterError::Invalid {
            key: self.key.clone(),
            expected: expected.into(),
            value: format!("{shown:?}"),
        }
    }

    fn number(&self) -> Option<f64> {
        match &self.v.0 {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|x| x.is_finite())
    }

    fn int(&self, min: usize) -> Result<usize, HyperparameterError> {
        let expected = if min == 0 {
            "a whole number >= 0"
        } else {
            "a whole number >= 1"
        };
        // "10", 10, "10.0" and "1e1" are all ten; "10.5" is not a whole number.
        match self.number() {
            Some(x) if x.fract() == 0.0 && x >= min as f64 && x <= u32::MAX as f64 => {
                Ok(x as usize)
            }
            _ => Err(self.invalid(expected)),
        }
    }

    fn float(&self, range: Range) -> Result<f64, HyperparameterError> {
        let (ok, expected): (fn(f64) -> bool, &str) = match range {
            Range::Positive => (|x| x > 0.0, "a number > 0 (e.g. 0.001 or 1e-3)"),
            Range::NonNegative => (|x| x >= 0.0, "a number >= 0"),
            Range::Fraction => (|x| (0.0..1.0).contains(&x), "a number in [0, 1)"),
        };
        self.number()
            .filter(|x| ok(*x))
            .ok_or_else(|| self.invalid(expected))
    }

    fn bool(&self) -> Result<bool, HyperparameterError> {
        let expected = "true or false (also True/False, 1/0)";
        match &self.v.0 {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
            Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(self.invalid(expected)),
            },
            _ => Err(self.invalid(expected)),
        }
    }

    /// A path; an empty string means "not set".
    fn path(&self) -> Result<Option<PathBuf>, HyperparameterError> {
        match &self.v.0 {
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Ok(Some(PathBuf::from(s.trim()))),
            // A name like `123` decodes as a number: the raw text is the path.
            Value::Number(_) => Ok(Some(PathBuf::from(self.v.1.trim()))),
            _ => Err(self.invalid("a path to a model package directory")),
        }
    }

    fn class_weights(&self) -> Result<ClassWeights, HyperparameterError> {
        let expected = "`none`, `balanced` or a JSON list of positive numbers, one per class";
        match &self.v.0 {
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "none" | "" => Ok(ClassWeights::None),
                "balanced" => Ok(ClassWeights::Balanced),
                _ => Err(self.invalid(expected)),
            },
            Value::Null => Ok(ClassWeights::None),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_f64().filter(|x| x.is_finite() && *x > 0.0))
                .collect::<Option<Vec<f64>>>()
                .filter(|w| !w.is_empty())
                .map(ClassWeights::Explicit)
                .ok_or_else(|| self.invalid(expected)),
            _ => Err(self.invalid(expected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(text: &str) -> Result<Parsed, HyperparameterError> {
        parse_file(std::path::Path::new("hyperparameters.json"), text)
    }

    /// The quoted (SDK >= 2.110), unquoted (older SDKs, raw API) and tuner forms, key by key:
    /// `(key, value as it appears in the file, what it changes from the defaults)`.
    #[test]
    fn values_decode_then_coerce_to_the_declared_type() {
        type Expect = fn(&mut Hyperparameters);
        let cases: &[(&str, &str, Expect)] = &[
            ("epochs", r#""10""#, |h| h.epochs = 10),
            ("epochs", r#""\"10\"""#, |h| h.epochs = 10),
            ("epochs", "10", |h| h.epochs = 10),
            ("epochs", r#""1e1""#, |h| h.epochs = 10),
            ("lr", r#""0.001""#, |h| h.lr = 0.001),
            ("lr", r#""1e-3""#, |h| h.lr = 1e-3),
            ("lr", r#""\"1e-3\"""#, |h| h.lr = 1e-3),
            ("lr", r#"".005""#, |h| h.lr = 0.005),
            ("learning_rate", r#""0.01""#, |h| h.lr = 0.01),
            ("augment", r#""True""#, |h| h.augment = true),
            ("augment", r#""true""#, |h| h.augment = true),
            ("augment", r#""\"true\"""#, |h| h.augment = true),
            ("augment", r#""1""#, |h| h.augment = true),
            ("augment", r#""False""#, |h| h.augment = false),
            ("augment", "true", |h| h.augment = true),
            ("seed", r#""42""#, |h| h.seed = 42),
            ("patience", r#""0""#, |h| h.patience = 0),
            ("label_smoothing", r#""0.1""#, |h| h.label_smoothing = 0.1),
            ("weight_decay", r#""0""#, |h| h.weight_decay = 0.0),
            ("validation_fraction", r#""0""#, |h| {
                h.validation_fraction = 0.0
            }),
            ("batch_size", r#""\"8\"""#, |h| h.batch_size = 8),
            ("base_model", r#""\"/opt/ml/input/data/m\"""#, |h| {
                h.base_model = Some("/opt/ml/input/data/m".into())
            }),
            ("base_model", r#""/m/lite0""#, |h| {
                h.base_model = Some("/m/lite0".into())
            }),
            ("base_model", r#""""#, |_| {}),
            ("class_weights", r#""balanced""#, |h| {
                h.class_weights = ClassWeights::Balanced
            }),
            ("class_weights", r#""\"none\"""#, |_| {}),
            ("class_weights", r#""[1,2.5]""#, |h| {
                h.class_weights = ClassWeights::Explicit(vec![1.0, 2.5])
            }),
        ];
        for (key, value, change) in cases {
            let parsed = parse_json(&format!("{{\"{key}\": {value}}}"))
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
            let mut expected = Hyperparameters::default();
            change(&mut expected);
            assert_eq!(parsed.hyperparameters, expected, "{key}={value}");
            assert!(parsed.unknown.is_empty(), "{key}={value}");
        }
    }

    /// The contract's example, with wick's key names, plus the key the tuner injects.
    #[test]
    fn a_full_tuner_file_parses_and_reports_unknown_keys() -> Result<(), HyperparameterError> {
        let parsed = parse_json(
            r#"{"epochs":"10","lr":"0.001","base_model":"\"/m\"","augment":"True",
                "class_weights":"[1,2]","_tuning_objective_metric":"val_loss","arch":"resnet"}"#,
        )?;
        let h = &parsed.hyperparameters;
        assert_eq!((h.epochs, h.lr, h.augment), (10, 0.001, true));
        assert_eq!(h.base_model.as_deref(), Some(std::path::Path::new("/m")));
        assert_eq!(h.class_weights, ClassWeights::Explicit(vec![1.0, 2.0]));
        assert_eq!(parsed.unknown, ["_tuning_objective_metric", "arch"]);
        assert_eq!(
            parse_json("{}")?.hyperparameters,
            Hyperparameters::default()
        );
        Ok(())
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_what_was_expected() {
        let whole = "a whole number >= 1";
        let positive = "a number > 0 (e.g. 0.001 or 1e-3)";
        // (key, value in the file, what was expected, the value as the message shows it)
        let cases = [
            ("epochs", r#""ten""#, whole, r#""ten""#),
            ("epochs", r#""\"ten\"""#, whole, r#""ten""#),
            ("epochs", r#""0""#, whole, r#""0""#),
            ("epochs", r#""2.5""#, whole, r#""2.5""#),
            ("lr", r#""-1""#, positive, r#""-1""#),
            ("lr", r#""fast""#, positive, r#""fast""#),
            (
                "augment",
                r#""yes please""#,
                "true or false (also True/False, 1/0)",
                r#""yes please""#,
            ),
            ("label_smoothing", r#""1""#, "a number in [0, 1)", r#""1""#),
            (
                "class_weights",
                r#""[1,-2]""#,
                "`none`, `balanced` or a JSON list of positive numbers, one per class",
                r#""[1,-2]""#,
            ),
        ];
        for (key, value, expected, shown) in cases {
            let err = parse_json(&format!("{{\"{key}\": {value}}}"))
                .err()
                .map(|e| e.to_string());
            let message = format!("hyperparameter `{key}`: expected {expected} (given: {shown})");
            assert_eq!(err, Some(message), "{key}={value}");
        }
        let both = parse_json(r#"{"lr":"0.1","learning_rate":"0.2"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(both.is_some_and(|e| e.contains("`lr` or `learning_rate`, not both")));
        let not_an_object = parse_json("[1]").err().map(|e| e.to_string());
        assert!(not_an_object.is_some_and(|e| e.contains("is not a JSON object")));
    }
}
