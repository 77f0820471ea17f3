//! Finding the state dict inside an unpickled checkpoint, and decoding its
//! tensor entries into storage references. No tensor data is touched here.

use std::collections::HashSet;

use super::gather::Dtype;
use super::pickle::{Node, Value};

/// Keys under which training scripts nest the weights, most wanted first.
/// Plain weights beat EMA copies: the EMA key is only taken when no plain
/// one holds tensors.
const PREFERRED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "params",
    "weights",
    "state_dict_ema",
    "model_ema",
    "ema",
    "ema_state_dict",
    "params_ema",
];

/// Where a tensor's storage lives: the record `key`, its element type, and
/// for legacy storage views the sub-range of the root storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub(crate) key: String,
    /// Storage class as pickled (e.g. `FloatStorage`), for messages.
    pub(crate) class: String,
    pub(crate) dtype: Option<Dtype>,
    /// Element count the pickle declares for the storage.
    pub(crate) numel: u64,
    pub(crate) view: Option<StorageView>,
}

/// A legacy (pre-1.0) storage view: `numel` elements at `offset` of the root.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageView {
    pub(crate) offset: usize,
    pub(crate) numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it. Offsets and strides count
/// elements of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub(crate) storage: StorageRef,
    pub(crate) dtype: Option<Dtype>,
    pub(crate) offset: usize,
    pub(crate) size: Vec<usize>,
    pub(crate) stride: Vec<usize>,
}

/// Decodes a storage persistent id: `('storage', class, key, location,
/// numel[, view_metadata])`. `Ok(None)` for other kinds of ids.
pub(crate) fn parse_storage(id: &Value) -> Result<Option<StorageRef>, String> {
    let Some(parts) = id.as_seq() else {
        return Ok(None);
    };
    if parts.first().and_then(Value::as_str) != Some("storage") {
        return Ok(None);
    }
    let [_, class, key, _location, numel, rest @ ..] = parts else {
        return Err(format!(
            "storage id has {} fields, expected 5 or 6",
            parts.len()
        ));
    };
    let class = match class.as_global() {
        Some((_, name)) => name.to_owned(),
        None => return Err("storage id does not name a storage class".into()),
    };
    let key = match key {
        Value::Int(i) => i.to_string(),
        k => k.as_str().ok_or("storage key is not a string")?.to_owned(),
    };
    let numel = numel
        .as_int()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("storage size is not a non-negative integer")?;
    let view = match rest {
        [] | [Value::None] => None,
        [meta] => {
            let fields = meta.as_seq().unwrap_or_default();
            let [_view_key, offset, len] = fields else {
                return Err("storage view metadata is not (key, offset, size)".into());
            };
            Some(StorageView {
                offset: non_negative(offset).ok_or("bad storage view offset")?,
                numel: non_negative(len).ok_or("bad storage view size")?,
            })
        }
        _ => return Err("storage id has trailing fields".into()),
    };
    Ok(Some(StorageRef {
        dtype: Dtype::from_storage_class(&class),
        key,
        class,
        numel,
        view,
    }))
}

fn non_negative(v: &Value) -> Option<usize> {
    usize::try_from(v.as_int()?).ok()
}

fn dims(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    let items = v.as_seq().ok_or_else(|| format!("{what} is not a tuple"))?;
    items
        .iter()
        .map(|d| non_negative(d).ok_or_else(|| format!("{what} holds a non-integer or negative")))
        .collect()
}

/// What a dict value turned out to be.
#[derive(Debug)]
pub(crate) enum Entry {
    Tensor(TensorRef),
    /// A tensor of a kind we do not load (quantized, sparse, meta...).
    Unsupported(String),
    NotTensor,
}

/// Whether `v` is a call to one of torch's tensor rebuild functions.
fn is_tensor_like(v: &Value) -> bool {
    let Some((callable, _)) = v.as_call() else {
        return false;
    };
    matches!(
        callable.as_global(),
        Some(("torch._utils" | "torch._tensor", name)) if name.starts_with("_rebuild")
    )
}

/// Decodes one dict value. Errors mean a tensor entry is malformed.
pub(crate) fn parse_entry(v: &Value) -> Result<Entry, String> {
    match v.as_call() {
        Some((callable, args)) => parse_call(callable, args),
        None => Ok(Entry::NotTensor),
    }
}

fn parse_call(callable: &Value, args: &Value) -> Result<Entry, String> {
    let Some((module, name)) = callable.as_global() else {
        return Ok(Entry::NotTensor);
    };
    let args = args.as_seq();
    match (module, name) {
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
            let args = args.ok_or("rebuild arguments are not a tuple")?;
            rebuild(args, name == "_rebuild_tensor_v3").map(Entry::Tensor)
        }
        // Parameters wrap the tensor: (data, requires_grad, hooks[, state]).
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match args.and_then(|a| a.first()) {
                Some(data) => parse_entry(data),
                None => Err("parameter without data".into()),
            }
        }
        // Tensor subclasses: (func, type, args, state).
        ("torch._tensor", "_rebuild_from_type" | "_rebuild_from_type_v2") => match args {
            Some([func, _, inner, ..]) => parse_call(func, inner),
            _ => Err("subclass rebuild without (func, type, args)".into()),
        },
        ("torch._utils" | "torch._tensor", other) if other.starts_with("_rebuild") => {
            Ok(Entry::Unsupported(format!("{module}.{other}")))
        }
        _ => Ok(Entry::NotTensor),
    }
}

/// `(storage, storage_offset, size, stride, requires_grad, hooks[, dtype, metadata])`.
fn rebuild(args: &[Value], v3: bool) -> Result<TensorRef, String> {
    let [storage, offset, size, stride, rest @ ..] = args else {
        return Err(format!("rebuild has {} arguments, expected 4+", args.len()));
    };
    let id = storage
        .as_pers_id()
        .ok_or("tensor storage is not a persistent id")?;
    let storage = parse_storage(id)?.ok_or("tensor storage id is not a storage")?;
    let dtype = if v3 {
        match rest.get(2).and_then(Value::as_global) {
            Some(("torch", name)) => Dtype::from_torch_dtype(name),
            _ => return Err("_rebuild_tensor_v3 without a torch dtype".into()),
        }
    } else {
        storage.dtype
    };
    Ok(TensorRef {
        dtype,
        offset: non_negative(offset).ok_or("storage offset is not a non-negative integer")?,
        size: dims(size, "size")?,
        stride: dims(stride, "stride")?,
        storage,
    })
}

/// Locates the state dict: a preferred key holding tensors wins, else the
/// dict (this one or a nested one) with the most tensor values. `None`
/// when no dict holds any tensor.
pub(crate) fn find(root: &Value) -> Option<&[(Value, Value)]> {
    let mut seen = HashSet::new();
    match best(root, &mut seen) {
        Some((dict, n)) if n > 0 => Some(dict),
        _ => None,
    }
}

fn best<'a>(v: &'a Value, seen: &mut HashSet<usize>) -> Option<(&'a [(Value, Value)], usize)> {
    let dict: &'a Node<Vec<(Value, Value)>> = v.as_dict()?;
    // Shared sub-dicts are walked once: linear time on any DAG.
    if !seen.insert(dict.addr()) {
        return None;
    }
    for key in PREFERRED_KEYS {
        let child = dict
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v);
        if let Some(found) = child.and_then(|c| best(c, seen)) {
            if found.1 > 0 {
                return Some(found);
            }
        }
    }
    let count = dict
        .iter()
        .filter(|(k, v)| k.as_str().is_some() && is_tensor_like(v))
        .count();
    let mut top = (dict.as_slice(), count);
    for (_, child) in dict.iter() {
        if let Some(found) = best(child, seen) {
            if found.1 > top.1 {
                top = found;
            }
        }
    }
    Some(top)
}

/// A short description of what the checkpoint holds instead of a state
/// dict, for the "no tensors" error.
pub(crate) fn describe(root: &Value) -> String {
    match root {
        Value::Dict(d) => {
            let keys: Vec<&str> = d.iter().filter_map(|(k, _)| k.as_str()).take(8).collect();
            format!("a dict with keys {keys:?} and no tensor values")
        }
        Value::Build(n) | Value::Call(n) => match n.0.as_call().map(|c| c.0).unwrap_or(&n.0) {
            Value::Global(g) => format!(
                "a pickled `{}.{}` object, not a state dict (save `model.state_dict()` instead)",
                g.0, g.1
            ),
            _ => "a pickled object, not a state dict".into(),
        },
        Value::List(_) | Value::Tuple(_) => "a list, not a state dict".into(),
        _ => "a plain value, not a state dict".into(),
    }
}
