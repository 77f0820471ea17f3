//! Loader tests against the committed torch-written fixtures
//! (`tests/fixtures/checkpoints`, made by `tests/parity/make_checkpoints.py`)
//! and hand-built pickles for the cases torch will not write.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One expected tensor: name, shape, row-major values.
type Expected = (String, Vec<usize>, Vec<f32>);

/// The tensors of `tiny_expected.json`, plus the names that must be absent.
fn expected() -> (Vec<Expected>, Vec<String>) {
    let text = std::fs::read_to_string(fixture("tiny_expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensors = json["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            // JSON holds the f32 values exactly (as f64 reprs).
            let vals = t["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (name.clone(), shape, vals)
        })
        .collect();
    let absent = json["absent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (tensors, absent)
}

fn assert_matches_expected(w: &Weights, what: &str) {
    let (tensors, absent) = expected();
    assert_eq!(
        w.len(),
        tensors.len(),
        "{what}: {:?}",
        w.names().collect::<Vec<_>>()
    );
    for (name, shape, want) in &tensors {
        assert!(w.contains(name), "{what}: {name} missing");
        let got = w.get(name, shape).unwrap();
        assert_eq!(got.dtype(), candle_core::DType::F32);
        assert!(got.is_contiguous());
        assert_eq!(bits(&values(&got)), bits(want), "{what}: {name}");
    }
    for name in &absent {
        assert!(!w.contains(name), "{what}: {name} should be skipped");
    }
}

#[test]
fn zip_fixture_matches_torch() {
    let w = Weights::load(&fixture("tiny_zip.pth")).unwrap();
    assert_matches_expected(&w, "zip");
}

#[test]
fn legacy_fixture_matches_torch() {
    let w = Weights::load(&fixture("tiny_legacy.pth")).unwrap();
    assert_matches_expected(&w, "legacy");
}

#[test]
fn safetensors_round_trip_and_magic_detection() {
    let w = Weights::load(&fixture("tiny_legacy.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A misleading extension: the format comes from the bytes.
    let path = dir.path().join("weights.pth");
    w.save_safetensors(&path).unwrap();
    let back = Weights::load(&path).unwrap();
    assert_matches_expected(&back, "safetensors");
    assert_eq!(
        back.names().collect::<Vec<_>>(),
        w.names().collect::<Vec<_>>()
    );
    // Only the final file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn from_tensors_normalises_on_get_and_saves_f32() {
    let t = Tensor::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu)
        .unwrap()
        .t()
        .unwrap();
    let w = Weights::from_tensors(HashMap::from([("m.w".to_owned(), t)]));
    let got = w.get("m.w", &[2, 2]).unwrap();
    assert_eq!(got.dtype(), candle_core::DType::F32);
    assert_eq!(values(&got), [1.0, 3.0, 2.0, 4.0]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    w.save_safetensors(&path).unwrap();
    let back = Weights::load(&path).unwrap();
    assert_eq!(
        values(&back.get("m.w", &[2, 2]).unwrap()),
        [1.0, 3.0, 2.0, 4.0]
    );
}

#[test]
fn get_errors_name_the_tensor() {
    let w = Weights::load(&fixture("tiny_zip.pth")).unwrap();
    let e = w.get("conv.weight", &[4, 3, 3]).unwrap_err();
    assert!(matches!(e, WeightsError::ShapeMismatch { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("conv.weight") && msg.contains("[4, 3, 3]") && msg.contains("[4, 3, 3, 3]")
    );

    let e = w.get("backbone.conv.weight", &[4, 3, 3, 3]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`backbone.conv.weight` not found"), "{msg}");
    assert!(msg.contains("did you mean `conv.weight`"), "{msg}");
    assert!(msg.contains("tiny_zip.pth"), "{msg}");

    let e = w.get("conv.wieght", &[4, 3, 3, 3]).unwrap_err();
    assert!(e.to_string().contains("did you mean `conv.weight`"), "{e}");

    let e = w.get("totally.unrelated", &[1]).unwrap_err();
    assert!(matches!(e, WeightsError::Missing { hint: None, .. }), "{e}");
}

#[test]
fn synthetic_weights_synthesize_only_absent_names() {
    let w = Weights::synthetic();
    assert!(w.is_empty() && w.synthesizes_missing() && !w.contains("a.weight"));
    let got = w.get("a.weight", &[3, 2]).unwrap();
    assert_eq!(
        bits(&values(&got)),
        bits(&values(&synthesize("a.weight", &[3, 2])))
    );
    assert_eq!(w.names().count(), 0);
}

#[test]
fn empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.pth");
    std::fs::write(&path, b"").unwrap();
    let e = Weights::load(&path).unwrap_err();
    assert!(matches!(e, WeightsError::Empty { .. }));
    assert!(e.to_string().contains("empty.pth"));
}

#[test]
fn missing_file_is_an_io_error() {
    let e = Weights::load(Path::new("/nonexistent/dir/model.pth")).unwrap_err();
    assert!(matches!(e, WeightsError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/dir/model.pth"));
}

/// Every prefix of every fixture (and of a safetensors copy) must fail
/// cleanly: the loader may never panic or accept a cut file. All prefixes
/// go through the in-memory parser; a few go through real files too.
#[test]
fn truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("full.safetensors");
    Weights::load(&fixture("tiny_zip.pth"))
        .unwrap()
        .save_safetensors(&st)
        .unwrap();
    let sources = [fixture("tiny_zip.pth"), fixture("tiny_legacy.pth"), st];
    let cut = dir.path().join("cut.bin");
    for src in &sources {
        let full = std::fs::read(src).unwrap();
        for len in 0..full.len() {
            if let Ok(w) = Weights::from_bytes(&cut, &full[..len]) {
                panic!("{} cut at {len} loaded {} tensors", src.display(), w.len());
            }
        }
        for len in [1, 9, full.len() / 2, full.len() - 1] {
            std::fs::write(&cut, &full[..len]).unwrap();
            let e = Weights::load(&cut).unwrap_err();
            assert!(e.to_string().contains("cut.bin"), "{e}");
        }
    }
}

/// A small deterministic generator for garbage.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.bin");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let prefixes: [&[u8]; 5] = [
        b"",
        b"\x80\x02",
        b"PK\x03\x04",
        b"\xff\xff\xff\xff\xff\xff\xff\x7f{",
        b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.",
    ];
    for prefix in prefixes {
        for len in [1usize, 7, 64, 1000] {
            let mut bytes = prefix.to_vec();
            bytes.extend((0..len).map(|_| rng.next() as u8));
            std::fs::write(&path, &bytes).unwrap();
            let e = Weights::load(&path).unwrap_err();
            assert!(e.to_string().contains("garbage.bin"), "{e}");
        }
    }
}

/// Random byte corruption of real files: any outcome but a panic (or a
/// runaway allocation) is acceptable.
#[test]
fn corrupted_fixtures_never_panic() {
    let path = Path::new("mutant.pth");
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    for src in ["tiny_zip.pth", "tiny_legacy.pth"] {
        let full = std::fs::read(fixture(src)).unwrap();
        for _ in 0..1000 {
            let mut bytes = full.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() % bytes.len() as u64) as usize;
                bytes[i] = rng.next() as u8;
            }
            let _ = Weights::from_bytes(path, &bytes);
        }
    }
}

#[test]
fn zip_without_data_pkl_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not_torch.zip");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zw.start_file("archive/data/0", opts).unwrap();
    zw.write_all(&[0u8; 16]).unwrap();
    zw.finish().unwrap();
    let e = Weights::load(&path).unwrap_err();
    assert!(matches!(e, WeightsError::MissingDataPkl { .. }), "{e}");
    assert!(e.to_string().contains("not_torch.zip"));
}

/// Rewrites the zip fixture with one storage record cut short.
#[test]
fn zip_storage_shorter_than_tensor_is_an_error() {
    let src = std::fs::read(fixture("tiny_zip.pth")).unwrap();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.pth");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        // Record 1 is `module.conv.weight` (4*3*3*3 floats).
        if name == "tiny_zip/data/1" {
            data.truncate(100);
        }
        zw.start_file(name, opts).unwrap();
        zw.write_all(&data).unwrap();
    }
    zw.finish().unwrap();
    let e = Weights::load(&path).unwrap_err();
    match &e {
        WeightsError::StorageTooShort {
            tensor,
            needed,
            available,
            ..
        } => {
            assert_eq!(tensor, "module.conv.weight");
            assert_eq!((*needed, *available), (108, 25));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("short.pth"));
}

/// A deflated data.pkl of 4 MiB of zeros in a file of a few KiB: refused
/// before it is inflated, as no real checkpoint needs it.
#[test]
fn zip_records_cannot_inflate_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.pth");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zw.start_file("archive/data.pkl", opts).unwrap();
    zw.write_all(&vec![0u8; 4 << 20]).unwrap();
    zw.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 64 << 10);
    let e = Weights::load(&path).unwrap_err();
    assert!(e.to_string().contains("inflates past"), "{e}");
}
