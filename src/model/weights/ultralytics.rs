//! What an ultralytics checkpoint says about its model besides the tensors, read from the pickle
//! without running it: the model class (`DetectionModel`, `SegmentationModel`, ...), the layer
//! list of the yaml it was built from, and the training image size. The detection task decides
//! from these which network to build (`model/detect/checkpoint.rs`).

use super::pickle::Value;

/// The facts of a pickled ultralytics model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UltralyticsModel {
    /// The module's class, e.g. `DetectionModel`.
    pub(crate) class: String,
    /// The yaml it was built from (`yolo11n.yaml`), when recorded.
    pub(crate) yaml_file: Option<String>,
    /// The module name of every yaml row, backbone then head (`Conv`, `C3k2`, ..., `Detect`).
    pub(crate) layers: Vec<String>,
    /// The training image size `(height, width)` (`imgsz`), which ultralytics' predictor
    /// also uses.
    pub(crate) image_size: Option<(usize, usize)>,
}

fn field<'a>(dict: &'a Value, name: &str) -> Option<&'a Value> {
    dict.as_dict()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

/// The `__dict__` of a pickled object, or the dict itself (ultralytics stores its arguments as
/// a dict or as an `IterableSimpleNamespace` object).
fn attributes(v: &Value) -> Option<&Value> {
    match v.as_build() {
        Some((_, state)) => Some(state),
        None => v.as_dict().map(|_| v),
    }
}

/// `imgsz` as ultralytics writes it: one side, or `[height, width]`.
fn image_size(args: &Value) -> Option<(usize, usize)> {
    let imgsz = field(attributes(args)?, "imgsz")?;
    let side = |v: &Value| usize::try_from(v.as_int()?).ok().filter(|&s| s > 0);
    match imgsz.as_seq() {
        Some([h, w]) => Some((side(h)?, side(w)?)),
        Some(_) => None,
        None => side(imgsz).map(|s| (s, s)),
    }
}

/// The facts of `module`, the model object of the checkpoint `root`; `None` when it is not an
/// ultralytics model (its class is not from the `ultralytics` package).
pub(crate) fn describe(root: &Value, module: &Value) -> Option<UltralyticsModel> {
    let (object, state) = module.as_build()?;
    let (package, class) = object.as_call()?.0.as_global()?;
    if !package.starts_with("ultralytics.") {
        return None;
    }
    let yaml = field(state, "yaml");
    let rows = |part: &str| -> Vec<String> {
        yaml.and_then(|y| field(y, part))
            .and_then(Value::as_seq)
            .unwrap_or_default()
            .iter()
            .map(|row| {
                let name = row.as_seq().and_then(|r| r.get(2)).and_then(Value::as_str);
                name.unwrap_or("?").to_owned()
            })
            .collect()
    };
    let mut layers = rows("backbone");
    layers.extend(rows("head"));
    // The trainer's own record first: the module's `args` may be the defaults.
    let image_size = field(root, "train_args")
        .and_then(image_size)
        .or_else(|| field(state, "args").and_then(image_size));
    Some(UltralyticsModel {
        class: class.to_owned(),
        yaml_file: yaml
            .and_then(|y| field(y, "yaml_file"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        layers,
        image_size,
    })
}
