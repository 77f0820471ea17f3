//! Tests on legacy-format checkpoints assembled byte by byte, for layouts and
//! corruptions torch never writes (or only old versions did).

use std::path::PathBuf;

use super::*;

/// Emits protocol-2 pickle opcodes.
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Self {
        Pk(vec![0x80, 2])
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn s(&mut self, s: &str) -> &mut Self {
        self.raw(b"X")
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }
    fn i(&mut self, v: i32) -> &mut Self {
        self.raw(b"J").raw(&v.to_le_bytes())
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.raw(b"c")
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }
    fn ints(&mut self, v: &[i32]) -> &mut Self {
        self.raw(b"(");
        for &x in v {
            self.i(x);
        }
        self.raw(b"t")
    }
    fn done(&mut self) -> Vec<u8> {
        self.raw(b".");
        std::mem::take(&mut self.0)
    }
}

/// One tensor entry of a state dict.
struct T<'a> {
    name: &'a str,
    key: &'a str,
    class: &'a str,
    numel: i32,
    view: Option<(i32, i32)>,
    offset: i32,
    size: &'a [i32],
    stride: &'a [i32],
    /// `Some(dtype)` writes `_rebuild_tensor_v3` with `torch.<dtype>`.
    v3: Option<&'a str>,
}

fn t<'a>(name: &'a str, key: &'a str, numel: i32, size: &'a [i32], stride: &'a [i32]) -> T<'a> {
    T {
        name,
        key,
        class: "FloatStorage",
        numel,
        view: None,
        offset: 0,
        size,
        stride,
        v3: None,
    }
}

fn emit_tensor(p: &mut Pk, t: &T<'_>) {
    let func = if t.v3.is_some() {
        "_rebuild_tensor_v3"
    } else {
        "_rebuild_tensor_v2"
    };
    let module = if t.class == "UntypedStorage" {
        "torch.storage"
    } else {
        "torch"
    };
    p.global("torch._utils", func).raw(b"((").s("storage");
    p.global(module, t.class).s(t.key).s("cpu").i(t.numel);
    match t.view {
        Some((off, n)) => p.raw(b"(").s("view").i(off).i(n).raw(b"t"),
        None => p.raw(b"N"),
    };
    p.raw(b"tQ")
        .i(t.offset)
        .ints(t.size)
        .ints(t.stride)
        .raw(b"\x89");
    p.global("collections", "OrderedDict").raw(b")R");
    if let Some(dtype) = t.v3 {
        p.global("torch", dtype);
    }
    p.raw(b"tR");
}

/// A dict tree: tensors at the leaves, `Int`s as non-tensor noise.
enum Node<'a> {
    Tensor(T<'a>),
    Int(i32),
    Dict(Vec<(&'a str, Node<'a>)>),
}

fn emit(p: &mut Pk, node: &Node<'_>) {
    match node {
        Node::Tensor(t) => emit_tensor(p, t),
        Node::Int(i) => {
            p.i(*i);
        }
        Node::Dict(items) => {
            p.raw(b"}(");
            for (k, v) in items {
                p.s(k);
                emit(p, v);
            }
            p.raw(b"u");
        }
    }
}

fn sd<'a>(tensors: Vec<T<'a>>) -> Node<'a> {
    Node::Dict(
        tensors
            .into_iter()
            .map(|t| (t.name, Node::Tensor(t)))
            .collect(),
    )
}

/// The magic number, protocol version and system info pickles.
fn header() -> Vec<u8> {
    let mut out = Pk::new()
        .raw(b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")
        .done();
    out.extend(Pk::new().raw(b"M\xe9\x03").done());
    out.extend(Pk::new().raw(b"}").s("little_endian").raw(b"\x88s").done());
    out
}

/// A whole legacy file: header pickles, the object, the key list, then each
/// storage's u64 element count and bytes.
fn legacy(object: &Node<'_>, storages: &[(&str, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = header();
    let mut p = Pk::new();
    emit(&mut p, object);
    out.extend(p.done());
    let mut keys = Pk::new();
    keys.raw(b"](");
    for (k, _, _) in storages {
        keys.s(k);
    }
    out.extend(keys.raw(b"e").done());
    for (_, numel, bytes) in storages {
        out.extend(numel.to_le_bytes());
        out.extend(bytes);
    }
    out
}

fn floats(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn storage(key: &str, n: usize) -> (&str, u64, Vec<u8>) {
    (key, n as u64, floats((0..n).map(|i| i as f32)))
}

fn load(bytes: &[u8]) -> (Result<Weights, WeightsError>, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.pt");
    std::fs::write(&path, bytes).unwrap();
    (Weights::load(&path), dir, path)
}

fn vals(w: &Weights, name: &str) -> Vec<f32> {
    let shape = w.shape(name).unwrap().to_vec();
    let t = w.get(name, &shape).unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn builder_round_trips_a_plain_tensor() {
    let obj = sd(vec![t("w", "0", 6, &[2, 3], &[1, 2])]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 6)]));
    let w = w.unwrap();
    assert_eq!(vals(&w, "w"), [0., 2., 4., 1., 3., 5.]);
}

#[test]
fn storage_shorter_than_tensor() {
    let obj = sd(vec![t("w", "0", 4, &[2, 3], &[3, 1])]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 4)]));
    match w.unwrap_err() {
        WeightsError::StorageTooShort {
            tensor,
            needed,
            available,
            path,
        } => {
            assert_eq!((tensor.as_str(), needed, available), ("w", 6, 4));
            assert!(path.ends_with("hand.pt"));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn legacy_storage_views() {
    // Root storage 0..8; the view starts at element 2; the tensor at 1 of it.
    let mut w = t("w", "0", 8, &[2], &[2]);
    w.view = Some((2, 4));
    w.offset = 1;
    let (got, _d, _) = load(&legacy(&sd(vec![w]), &[storage("0", 8)]));
    assert_eq!(vals(&got.unwrap(), "w"), [3., 5.]);

    let mut w = t("w", "0", 8, &[2], &[1]);
    w.view = Some((6, 4));
    let (got, _d, _) = load(&legacy(&sd(vec![w]), &[storage("0", 8)]));
    assert!(matches!(got, Err(WeightsError::StorageTooShort { .. })));
}

#[test]
fn untyped_storage_with_v3_dtype() {
    let mut w = t("h", "0", 8, &[2, 2], &[2, 1]);
    w.class = "UntypedStorage";
    w.v3 = Some("float16");
    let bytes: Vec<u8> = [1.0f32, -2.0, 0.5, 8.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let (got, _d, _) = load(&legacy(&sd(vec![w]), &[("0", 8, bytes)]));
    assert_eq!(vals(&got.unwrap(), "h"), [1.0, -2.0, 0.5, 8.0]);
}

#[test]
fn nesting_prefers_known_keys_then_most_tensors() {
    let one = |n| Node::Tensor(t(n, "0", 1, &[], &[]));
    let obj = Node::Dict(vec![
        ("ema", Node::Dict(vec![("a", one("a")), ("b", one("b"))])),
        ("model", Node::Dict(vec![("x", one("x"))])),
        ("epoch", Node::Int(3)),
    ]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 1)]));
    assert_eq!(w.unwrap().names().collect::<Vec<_>>(), ["x"]);

    let obj = Node::Dict(vec![
        ("lonely", one("lonely")),
        ("foo", Node::Dict(vec![("a", one("a"))])),
        ("bar", Node::Dict(vec![("b", one("b")), ("c", one("c"))])),
    ]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 1)]));
    assert_eq!(w.unwrap().names().collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn module_prefix_clash_is_an_error() {
    let obj = sd(vec![
        t("module.a", "0", 1, &[], &[]),
        t("a", "0", 1, &[], &[]),
    ]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 1)]));
    assert!(matches!(w, Err(WeightsError::DuplicateName { name, .. }) if name == "a"));
}

#[test]
fn files_without_float_tensors() {
    let obj = Node::Dict(vec![("epoch", Node::Int(3))]);
    let (w, _d, _) = load(&legacy(&obj, &[]));
    let e = w.unwrap_err();
    assert!(matches!(e, WeightsError::NoTensors { .. }), "{e}");
    assert!(e.to_string().contains("epoch"), "{e}");

    let mut n = t("bn.num_batches_tracked", "0", 1, &[], &[]);
    n.class = "LongStorage";
    let (w, _d, _) = load(&legacy(
        &sd(vec![n]),
        &[("0", 1, 7u64.to_le_bytes().to_vec())],
    ));
    assert!(matches!(w, Err(WeightsError::NoTensors { .. })));
}

#[test]
fn garbage_lengths_do_not_allocate() {
    let obj = sd(vec![t("w", "0", 4, &[4], &[1])]);
    let (w, _d, _) = load(&legacy(&obj, &[("0", u64::MAX / 2, floats([0.; 4]))]));
    assert!(matches!(w, Err(WeightsError::Truncated { .. })));

    // An expanded view claiming 2^40 elements of a 1-element storage.
    let obj = sd(vec![t("w", "0", 1, &[1 << 20, 1 << 20], &[0, 0])]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 1)]));
    let e = w.unwrap_err();
    assert!(e.to_string().contains("larger than the file"), "{e}");

    // A string whose length field says 4 GiB.
    let mut bytes = header();
    bytes.extend(b"\x80\x02X\xff\xff\xff\xffabc");
    let (w, _d, _) = load(&bytes);
    assert!(matches!(w, Err(WeightsError::Truncated { .. })));
}

#[test]
fn malformed_tensor_entries_are_corrupt() {
    let obj = sd(vec![t("w", "0", 4, &[2, 2], &[-1, 1])]);
    let (w, _d, _) = load(&legacy(&obj, &[storage("0", 4)]));
    let e = w.unwrap_err();
    assert!(matches!(e, WeightsError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("`w`"), "{e}");

    let mut odd = t("w", "0", 4, &[4], &[1]);
    odd.class = "MysteryStorage";
    let (w, _d, _) = load(&legacy(&sd(vec![odd]), &[storage("0", 4)]));
    assert!(matches!(w, Err(WeightsError::Unsupported { .. })));
}

#[test]
fn plain_pickles_are_not_checkpoints() {
    let (w, _d, _) = load(&Pk::new().raw(b"}").done());
    let e = w.unwrap_err();
    assert!(e.to_string().contains("magic number"), "{e}");
}
