//! Pickled `torch.nn.Module` objects (what ultralytics writes: a whole `DetectionModel` under
//! `model` or `ema`) turned into state-dict entries without running any code.
//!
//! The pickle reader records `NEWOBJ` + `BUILD` as an inert `(object, state)` pair whose state is
//! the module's `__dict__`. Walking `_parameters`, `_buffers` and `_modules` the way
//! `Module.state_dict()` does yields the same dotted names (`model.0.conv.weight`, ...).

use super::pickle::Value;

/// Checkpoint keys that may hold a module object, most wanted first. Ultralytics' trainer writes
/// `model: None` and the EMA weights under `ema`; `Model.save` writes `model` and `ema: None`.
const MODULE_KEYS: &[&str] = &["model", "ema", "module", "net"];

/// The `__dict__` of a pickled module, if `v` is one.
fn module_state(v: &Value) -> Option<&[(Value, Value)]> {
    let (_, state) = v.as_build()?;
    let dict = state.as_dict()?;
    let has = |name: &str| dict.iter().any(|(k, _)| k.as_str() == Some(name));
    (has("_modules") && has("_parameters")).then_some(dict.as_slice())
}

fn field<'a>(state: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    state
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

/// The module object of a checkpoint: the root itself, or one under [`MODULE_KEYS`].
pub(crate) fn find_module(root: &Value) -> Option<&Value> {
    if module_state(root).is_some() {
        return Some(root);
    }
    let dict = root.as_dict()?;
    MODULE_KEYS.iter().find_map(|key| {
        dict.iter()
            .find(|(k, v)| k.as_str() == Some(key) && module_state(v).is_some())
            .map(|(_, v)| v)
    })
}

/// Every parameter and persistent buffer below `module`, under its state-dict name. Values are
/// the pickled tensor rebuild calls, decoded later like any state dict's.
pub(crate) fn flatten(module: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    walk("", module, &mut out);
    out
}

fn walk(prefix: &str, module: &Value, out: &mut Vec<(String, Value)>) {
    // Depth is bounded by the pickle reader's nesting cap, so recursion is safe.
    let Some(state) = module_state(module) else {
        return;
    };
    let non_persistent: Vec<&str> = field(state, "_non_persistent_buffers_set")
        .and_then(|v| v.as_call())
        .and_then(|(_, args)| args.as_seq()?.first()?.as_seq())
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (group, skip) in [("_parameters", &[][..]), ("_buffers", &non_persistent[..])] {
        let Some(dict) = field(state, group).and_then(Value::as_dict) else {
            continue;
        };
        for (k, v) in dict.iter() {
            match k.as_str() {
                Some(name) if !matches!(v, Value::None) && !skip.contains(&name) => {
                    out.push((format!("{prefix}{name}"), v.clone()));
                }
                _ => {}
            }
        }
    }
    if let Some(children) = field(state, "_modules").and_then(Value::as_dict) {
        for (k, child) in children.iter() {
            if let Some(name) = k.as_str() {
                walk(&format!("{prefix}{name}."), child, out);
            }
        }
    }
}

/// The class names a module carries as its `names` attribute: ultralytics' `{0: "person", ...}`
/// dict (indices must be exactly `0..n`) or a plain list of strings.
pub(crate) fn class_names(module: &Value) -> Option<Vec<String>> {
    let state = module_state(module)?;
    match field(state, "names")? {
        Value::Dict(d) => {
            let mut names = vec![None; d.len()];
            for (k, v) in d.iter() {
                let i = usize::try_from(k.as_int()?).ok()?;
                *names.get_mut(i)? = Some(v.as_str()?.to_owned());
            }
            names.into_iter().collect()
        }
        v => v
            .as_seq()?
            .iter()
            .map(|n| n.as_str().map(str::to_owned))
            .collect(),
    }
}
