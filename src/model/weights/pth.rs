//! PyTorch checkpoints (`torch.save`): the zip container of torch >= 1.6 and
//! the legacy stream format before it. Both pickle the object with storages
//! replaced by persistent ids; they differ only in where storage bytes live.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::{Device, Tensor};

use super::error::WeightsError;
use super::gather::{self, Dtype, GatherError};
use super::module_tree;
use super::pickle::{self, PickleError, Unpickled, Value};
use super::state_dict::{self, Entry, StorageRef, TensorRef};
use super::ultralytics::{self, UltralyticsModel};

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), as the
/// little-endian bytes of the `LONG1` that opens a legacy file.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

/// Output elements allowed per input byte. Real files need at most 1 (f16
/// storages hold 2 bytes per element); the slack is for tensors sharing a
/// storage (tied weights, views), while a garbage size cannot ask for more.
const ELEMENTS_PER_FILE_BYTE: usize = 4;

/// Bytes all zip records together may inflate to, per file byte. torch
/// stores records uncompressed (ratio 1); a compressed archive needing more
/// than this could not pass the element budget anyway (8-byte elements).
const MAX_INFLATE_RATIO: usize = 8 * ELEMENTS_PER_FILE_BYTE;

/// Builds errors that name the file.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn corrupt(self, detail: impl Into<String>) -> WeightsError {
        WeightsError::Corrupt {
            path: self.path.to_owned(),
            detail: detail.into(),
        }
    }

    fn truncated(self, detail: impl Into<String>) -> WeightsError {
        WeightsError::Truncated {
            path: self.path.to_owned(),
            detail: detail.into(),
        }
    }

    fn unsupported(self, detail: impl Into<String>) -> WeightsError {
        WeightsError::Unsupported {
            path: self.path.to_owned(),
            detail: detail.into(),
        }
    }

    fn pickle(self, part: &str, base: usize, e: PickleError) -> WeightsError {
        let offset = base + e.offset;
        if e.truncated {
            self.truncated(format!("{part} pickle cut short at byte {offset}"))
        } else {
            WeightsError::Pickle {
                path: self.path.to_owned(),
                part: part.to_owned(),
                offset,
                reason: e.reason,
            }
        }
    }
}

/// Loads a zip-format checkpoint from its bytes.
pub(super) fn load_zip(path: &Path, bytes: &[u8]) -> Result<Loaded, WeightsError> {
    let ctx = Ctx { path };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|source| WeightsError::Zip {
        path: path.to_owned(),
        source,
    })?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(Result::ok)
        .map(Cow::into_owned)
        .collect();
    // The folder is named after the file at save time, so it varies.
    let pkl = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or_else(|| WeightsError::MissingDataPkl {
            path: path.to_owned(),
        })?
        .clone();
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let mut budget = Budget {
        left: bytes.len().saturating_mul(MAX_INFLATE_RATIO),
        file_len: bytes.len(),
    };

    let byteorder = format!("{prefix}byteorder");
    if names.contains(&byteorder) {
        let order = read_entry(ctx, &mut zip, &byteorder, &mut budget)?;
        if order.trim_ascii() == b"big" {
            return Err(ctx.unsupported("storages are big-endian"));
        }
    }
    let pkl_bytes = read_entry(ctx, &mut zip, &pkl, &mut budget)?;
    let un = pickle::load(&pkl_bytes).map_err(|e| ctx.pickle("data.pkl", 0, e))?;
    let (entries, module) = tensor_entries(ctx, &un.value)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for (_, t) in &entries {
        let is_float = t.dtype.and_then(|d| d.float).is_some();
        if is_float && !storages.contains_key(&t.storage.key) {
            let record = format!("{prefix}data/{}", t.storage.key);
            let data = read_entry(ctx, &mut zip, &record, &mut budget)?;
            storages.insert(t.storage.key.clone(), data);
        }
    }
    let tensors = materialize(
        ctx,
        entries,
        |key| storages.get(key).map(Vec::as_slice),
        bytes.len(),
    )?;
    Ok(Loaded { tensors, module })
}

/// What a PyTorch checkpoint yields: its float tensors, and what a pickled module says besides.
pub(super) struct Loaded {
    pub(super) tensors: Vec<(String, Tensor)>,
    pub(super) module: ModuleFacts,
}

/// What a pickled module carries besides its tensors (all `None` for a state dict).
#[derive(Default)]
pub(super) struct ModuleFacts {
    /// Its `names` (ultralytics' class names).
    pub(super) class_names: Option<Vec<String>>,
    /// The model an ultralytics checkpoint describes.
    pub(super) ultralytics: Option<UltralyticsModel>,
}

/// What zip records may still inflate to, shared by all reads of one file.
struct Budget {
    left: usize,
    file_len: usize,
}

/// Reads one zip record within the inflation budget.
fn read_entry(
    ctx: Ctx<'_>,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    budget: &mut Budget,
) -> Result<Vec<u8>, WeightsError> {
    let entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(ctx.corrupt(format!("zip record `{name}` is missing")));
        }
        Err(source) => {
            return Err(WeightsError::Zip {
                path: ctx.path.to_owned(),
                source,
            })
        }
    };
    let too_big = || {
        ctx.corrupt(format!(
            "zip record `{name}` inflates past {} bytes, more than this file can need",
            budget.left
        ))
    };
    let declared = usize::try_from(entry.size()).unwrap_or(usize::MAX);
    if declared > budget.left {
        return Err(too_big());
    }
    // The declared size is only a hint: never reserve more than the file.
    let mut out = Vec::with_capacity(declared.min(budget.file_len));
    // The zip reader checks the CRC at the end, catching flipped bytes.
    entry
        .take(budget.left as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| WeightsError::ZipRecord {
            path: ctx.path.to_owned(),
            record: name.to_owned(),
            source,
        })?;
    if out.len() > budget.left {
        return Err(too_big());
    }
    budget.left -= out.len();
    Ok(out)
}

/// Loads a legacy-format checkpoint: five pickles (magic number, protocol
/// version, system info, the object, storage keys), then each storage as a
/// little-endian u64 element count followed by its raw bytes.
pub(super) fn load_legacy(path: &Path, bytes: &[u8]) -> Result<Loaded, WeightsError> {
    let ctx = Ctx { path };
    let mut pos = 0usize;
    let mut next = |part: &str| -> Result<Unpickled, WeightsError> {
        let rest = bytes.get(pos..).unwrap_or_default();
        let un = pickle::load(rest).map_err(|e| ctx.pickle(part, pos, e))?;
        pos += un.len;
        Ok(un)
    };
    let magic = next("magic number")?;
    if !matches!(&magic.value, Value::BigInt(b) if **b == LEGACY_MAGIC) {
        return Err(
            ctx.unsupported("a pickle, but not a PyTorch checkpoint (legacy magic number missing)")
        );
    }
    let protocol = next("protocol version")?.value.as_int();
    if protocol != Some(LEGACY_PROTOCOL) {
        return Err(ctx.unsupported(format!(
            "legacy protocol version {protocol:?}, expected {LEGACY_PROTOCOL}"
        )));
    }
    let sys_info = next("system info")?.value;
    let big_endian = sys_info.as_dict().is_some_and(|d| {
        d.iter()
            .any(|(k, v)| k.as_str() == Some("little_endian") && matches!(v, Value::Bool(false)))
    });
    if big_endian {
        return Err(ctx.unsupported("saved on a big-endian machine"));
    }
    let object = next("state dict")?;
    let keys_value = next("storage keys")?.value;
    let keys = keys_value
        .as_seq()
        .ok_or_else(|| ctx.corrupt("storage key list is not a list"))?;

    // Element sizes come only from the persistent ids, and every storage's
    // bytes must be stepped over in order, so collect them all first.
    let mut types: HashMap<String, StorageRef> = HashMap::new();
    for id in &object.pers_ids {
        let storage = state_dict::parse_storage(id).map_err(|e| ctx.corrupt(e))?;
        if let Some(s) = storage {
            if let Some(prev) = types.get(&s.key) {
                if prev.class != s.class {
                    return Err(ctx.corrupt(format!(
                        "storage `{}` is both {} and {}",
                        s.key, prev.class, s.class
                    )));
                }
            } else {
                types.insert(s.key.clone(), s);
            }
        }
    }

    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| ctx.corrupt("storage key is not a string"))?;
        let storage = types.get(key).ok_or_else(|| {
            ctx.corrupt(format!("storage `{key}` is listed but no tensor uses it"))
        })?;
        let dtype = storage.dtype.ok_or_else(|| {
            ctx.unsupported(format!(
                "storage `{key}` has unknown type {}",
                storage.class
            ))
        })?;
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| ctx.truncated(format!("file ends before storage `{key}`")))?;
        let mut count = [0u8; 8];
        count.copy_from_slice(header);
        let numel = u64::from_le_bytes(count);
        let start = pos + 8;
        let remaining = bytes.len() - start;
        let nbytes = numel
            .checked_mul(dtype.size as u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= remaining)
            .ok_or_else(|| {
                ctx.truncated(format!(
                    "storage `{key}` claims {numel} elements of {} bytes; only {remaining} bytes remain",
                    dtype.size
                ))
            })?;
        storages.insert(key, &bytes[start..start + nbytes]);
        pos = start + nbytes;
    }

    let (entries, module) = tensor_entries(ctx, &object.value)?;
    let tensors = materialize(ctx, entries, |key| storages.get(key).copied(), bytes.len())?;
    Ok(Loaded { tensors, module })
}

type Entries = (Vec<(String, TensorRef)>, ModuleFacts);

/// The named tensor references of the state dict inside `root`, or of the pickled module
/// (with its class names) when there is no state dict.
fn tensor_entries(ctx: Ctx<'_>, root: &Value) -> Result<Entries, WeightsError> {
    let (named, facts): (Vec<(String, Value)>, _) = if let Some(dict) = state_dict::find(root) {
        let named = dict
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
            .collect();
        (named, ModuleFacts::default())
    } else if let Some(module) = module_tree::find_module(root) {
        let facts = ModuleFacts {
            class_names: module_tree::class_names(module),
            ultralytics: ultralytics::describe(root, module),
        };
        (module_tree::flatten(module), facts)
    } else {
        return Err(WeightsError::NoTensors {
            path: ctx.path.to_owned(),
            detail: state_dict::describe(root),
        });
    };
    let mut out = Vec::new();
    for (name, value) in &named {
        let name = name.as_str();
        let entry = state_dict::parse_entry(value)
            .map_err(|e| ctx.corrupt(format!("tensor `{name}`: {e}")))?;
        match entry {
            Entry::Tensor(t) => out.push((name.to_owned(), t)),
            Entry::Unsupported(kind) => tracing::warn!(
                path = %ctx.path.display(),
                tensor = name,
                kind,
                "skipping a tensor kind wick does not load"
            ),
            Entry::NotTensor => {}
        }
    }
    if out.is_empty() {
        return Err(WeightsError::NoTensors {
            path: ctx.path.to_owned(),
            detail: state_dict::describe(root),
        });
    }
    Ok((out, facts))
}

/// Gathers every float tensor from its storage bytes; integer tensors
/// (e.g. `num_batches_tracked`) are skipped.
fn materialize<'s>(
    ctx: Ctx<'_>,
    entries: Vec<(String, TensorRef)>,
    storage: impl Fn(&str) -> Option<&'s [u8]>,
    file_len: usize,
) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let mut budget = file_len.saturating_mul(ELEMENTS_PER_FILE_BYTE);
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let Some(dtype) = t.dtype else {
            tracing::warn!(
                path = %ctx.path.display(),
                tensor = name,
                storage = t.storage.class,
                "skipping a tensor of unknown element type"
            );
            continue;
        };
        let Some(float) = dtype.float else { continue };
        let root = storage(&t.storage.key).ok_or_else(|| {
            ctx.corrupt(format!(
                "tensor `{name}` uses storage `{}`, which is missing",
                t.storage.key
            ))
        })?;
        let bytes = view(ctx, &name, root, &t)?;
        let n = gather::numel(&t.size)
            .filter(|&n| n <= budget)
            .ok_or_else(|| {
                ctx.corrupt(format!(
                    "tensor `{name}` of size {:?} is larger than the file can hold",
                    t.size
                ))
            })?;
        budget -= n;
        let data = gather::gather(bytes, float, dtype.size, t.offset, &t.size, &t.stride).map_err(
            |e| match e {
                GatherError::OutOfRange { needed, available } => WeightsError::StorageTooShort {
                    path: ctx.path.to_owned(),
                    tensor: name.clone(),
                    needed,
                    available,
                },
                GatherError::BadLayout(why) => ctx.corrupt(format!("tensor `{name}`: {why}")),
            },
        )?;
        let tensor = Tensor::from_vec(data, t.size.as_slice(), &Device::Cpu).map_err(|source| {
            WeightsError::Tensor {
                name: name.clone(),
                source,
            }
        })?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// The bytes of the tensor's storage: the whole record, or for a legacy
/// storage view its sub-range.
fn view<'s>(
    ctx: Ctx<'_>,
    name: &str,
    root: &'s [u8],
    t: &TensorRef,
) -> Result<&'s [u8], WeightsError> {
    let Some(v) = &t.storage.view else {
        return Ok(root);
    };
    let elem = t.storage.dtype.unwrap_or(Dtype::BYTE).size;
    let range = v
        .offset
        .checked_mul(elem)
        .and_then(|start| Some((start, v.numel.checked_mul(elem)?.checked_add(start)?)));
    match range {
        Some((start, end)) if end <= root.len() => Ok(&root[start..end]),
        _ => Err(WeightsError::StorageTooShort {
            path: ctx.path.to_owned(),
            tensor: name.to_owned(),
            needed: (v.offset as u64).saturating_add(v.numel as u64),
            available: (root.len() / elem) as u64,
        }),
    }
}
