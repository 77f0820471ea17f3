//! The segmentation keys' coercions (`task`, `label_map`, `classes`, `image_size`,
//! `ignore_index`, `trainable`): the same [`Field`] rules as the other keys, plus one more
//! JSON decoding for the structured values the SDK sends as quoted text.

use serde_json::Value;

use super::{Field, HyperparameterError, TrainTask};
use crate::model::segment::Trainable;

impl Field {
    pub(super) fn task(&self) -> Result<TrainTask, HyperparameterError> {
        match &self.v.0 {
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "classification" => Ok(TrainTask::Classification),
                "segmentation" | "semantic_segmentation" => Ok(TrainTask::Segmentation),
                _ => Err(self.invalid("`classification` or `segmentation`")),
            },
            _ => Err(self.invalid("`classification` or `segmentation`")),
        }
    }

    /// `{"0": "background", "1": "cat"}`: every index from 0 to N-1 exactly once, N >= 2.
    pub(super) fn label_map(&self) -> Result<Vec<String>, HyperparameterError> {
        let expected = "a JSON object from class index to name with the keys 0..N-1 (N >= 2), \
                        e.g. {\"0\": \"background\", \"1\": \"cat\"}";
        // The SDK's JSON-encoded form decodes to the object's text: decode it once more.
        let reparsed = match &self.v.0 {
            Value::String(s) => serde_json::from_str::<Value>(s.trim()).ok(),
            _ => None,
        };
        let Some(Value::Object(map)) = reparsed.as_ref().or(Some(&self.v.0)) else {
            return Err(self.invalid(expected));
        };
        let mut labels = vec![None; map.len()];
        for (key, name) in map {
            let index = key.trim().parse::<usize>().ok().filter(|&i| i < map.len());
            let name = match name {
                Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => return Err(self.invalid(expected)),
            };
            match index.and_then(|i| labels.get_mut(i)) {
                Some(slot @ None) => *slot = Some(name),
                _ => return Err(self.invalid(expected)),
            }
        }
        let labels: Option<Vec<String>> = labels.into_iter().collect();
        labels
            .filter(|l| l.len() >= 2)
            .ok_or_else(|| self.invalid(expected))
    }

    /// `background,cat,dog` (or a JSON list): index = position, N >= 2, no empty name.
    pub(super) fn class_names(&self) -> Result<Vec<String>, HyperparameterError> {
        let expected = "comma-separated class names in index order, at least 2, e.g. \
                        `background,cat,dog`";
        let names: Vec<String> = match &self.v.0 {
            Value::String(s) => s.split(',').map(|n| n.trim().to_string()).collect(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(|s| s.trim().to_string()).unwrap_or_default())
                .collect(),
            _ => return Err(self.invalid(expected)),
        };
        if names.len() < 2 || names.iter().any(String::is_empty) {
            return Err(self.invalid(expected));
        }
        Ok(names)
    }

    /// `256` (square) or `[height, width]`, each 32 to 2048.
    pub(super) fn image_size(&self) -> Result<(usize, usize), HyperparameterError> {
        let expected = "a size in pixels from 32 to 2048 (`256`) or `[height, width]`";
        let side = |v: &Value| {
            v.as_f64()
                .filter(|x| x.fract() == 0.0 && (32.0..=2048.0).contains(x))
                .map(|x| x as usize)
        };
        let pair = |v: &Value| match v {
            Value::Number(_) => side(v).map(|s| (s, s)),
            Value::Array(items) if items.len() == 2 => side(&items[0]).zip(side(&items[1])),
            _ => None,
        };
        // The SDK's JSON-encoded form (`"\"256\""`) decodes to the string `256`.
        let size = match &self.v.0 {
            Value::String(s) => serde_json::from_str::<Value>(s.trim())
                .ok()
                .and_then(|v| pair(&v)),
            v => pair(v),
        };
        size.ok_or_else(|| self.invalid(expected))
    }

    /// `decoder` or `head`.
    pub(super) fn trainable(&self) -> Result<Trainable, HyperparameterError> {
        let expected = "`decoder` (the whole decoder) or `head` (the final convolution only)";
        match &self.v.0 {
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "decoder" => Ok(Trainable::Decoder),
                "head" => Ok(Trainable::Head),
                _ => Err(self.invalid(expected)),
            },
            _ => Err(self.invalid(expected)),
        }
    }

    /// A value 0..=255, or `none` / `-1` for no ignored value.
    pub(super) fn ignore_index(&self) -> Result<Option<u8>, HyperparameterError> {
        let expected = "an annotation value from 0 to 255, or `none`";
        match &self.v.0 {
            Value::Number(n) if n.as_f64() == Some(-1.0) => Ok(None),
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(expected)),
            Value::String(s) if s.trim().eq_ignore_ascii_case("none") => Ok(None),
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(v) => u8::try_from(v)
                    .map(Some)
                    .map_err(|_| self.invalid(expected)),
                Err(_) => Err(self.invalid(expected)),
            },
            Value::Null => Ok(None),
            _ => Err(self.invalid(expected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_file, Parsed};
    use super::*;

    fn parse_json(text: &str) -> Result<Parsed, HyperparameterError> {
        parse_file(std::path::Path::new("hyperparameters.json"), text)
    }

    #[test]
    fn segmentation_keys_parse() -> Result<(), HyperparameterError> {
        let h = parse_json(
            r#"{"task":"segmentation","label_map":"{\"1\": \"cat\", \"0\": \"background\"}",
                "image_size":"[192, 256]","ignore_index":"none","binary":"false",
                "trainable":"\"Head\""}"#,
        )?
        .hyperparameters;
        assert_eq!(h.task, Some(TrainTask::Segmentation));
        assert_eq!(h.trainable, Trainable::Head);
        assert_eq!(h.labels, Some(vec!["background".into(), "cat".into()]));
        assert_eq!(
            (h.image_size, h.ignore_index, h.binary),
            (Some((192, 256)), None, Some(false))
        );
        let h = parse_json(r#"{"classes":"bg, cat ,dog","image_size":"\"256\""}"#)?.hyperparameters;
        // The SDK's quoted forms.
        let sdk = parse_json(
            r#"{"label_map":"\"{\\\"0\\\": \\\"bg\\\", \\\"1\\\": \\\"cat\\\"}\"","ignore_index":"\"0\""}"#,
        )?
        .hyperparameters;
        assert_eq!(sdk.labels, Some(vec!["bg".into(), "cat".into()]));
        assert_eq!(sdk.ignore_index, Some(0));
        assert_eq!(h.labels.map(|l| l.len()), Some(3));
        assert_eq!(
            (h.image_size, h.ignore_index),
            (Some((256, 256)), Some(255))
        );
        Ok(())
    }

    #[test]
    fn bad_label_maps_name_the_field_and_value() {
        for bad in [
            r#""{\"0\": \"bg\", \"2\": \"cat\"}""#,
            r#""{\"0\": \"bg\"}""#,
            r#""{\"0\": \"bg\", \"x\": \"cat\"}""#,
            r#""background""#,
        ] {
            let err = parse_json(&format!("{{\"label_map\": {bad}}}"))
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e
                    .starts_with("hyperparameter `label_map`: expected a JSON object")
                    && e.contains("(given: ")),
                "{bad}: {err:?}"
            );
        }
        let both = parse_json(r#"{"label_map":"{}","classes":"a,b"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(both.is_some_and(|e| e.contains("not both")));
        let trainable = parse_json(r#"{"trainable":"encoder"}"#)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            trainable.as_deref(),
            Some(
                "hyperparameter `trainable`: expected `decoder` (the whole decoder) or `head` \
                 (the final convolution only) (given: \"encoder\")"
            )
        );
        let size = parse_json(r#"{"image_size":"16"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(size.is_some_and(|e| e.contains("`image_size`") && e.contains("\"16\"")));
    }
}
