//! Packing and unpacking well-formed and damaged archives. Hostile archives (traversal, links,
//! devices, bombs) are tested end to end in `tests/it/artifacts/hostile.rs`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::unpack::relative_path;
use super::*;

fn sample_package(dir: &Path) {
    fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    fs::write(dir.join("config.json"), b"{\"architecture\": \"x\"}").unwrap();
    fs::write(dir.join("nested/deeper/weights.bin"), vec![7u8; 300_000]).unwrap();
    fs::write(dir.join("run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(dir.join("empty")).unwrap();
}

#[test]
fn pack_then_unpack_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out, dest) = (
        tmp.path().join("src"),
        tmp.path().join("model.tar.gz"),
        tmp.path().join("dest"),
    );
    sample_package(&src);
    let packed = pack(&src, &out).unwrap();
    assert_eq!(packed.files, 3);
    assert_eq!(packed.bytes, 300_000 + 21 + 10);
    assert!(packed.archive_bytes < 10_000, "{packed:?}");

    fs::create_dir(&dest).unwrap();
    let stats = unpack(
        fs::File::open(&out).unwrap(),
        &dest,
        &ArchiveLimits::default(),
    )
    .unwrap();
    assert_eq!((stats.files, stats.bytes), (3, packed.bytes));
    assert_eq!(
        fs::read(dest.join("nested/deeper/weights.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert!(dest.join("empty").is_dir());
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("config.json"), 0o644);
}

#[test]
fn files_sit_at_the_archive_root_and_output_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_package(&src);
    let outside = tmp.path().join("outside.tar.gz");
    pack(&src, &outside).unwrap();
    // Written inside the package itself, twice: the existing archive is not archived again.
    let inside = src.join("model.tar.gz");
    pack(&src, &inside).unwrap();
    assert_eq!(fs::read(&inside).unwrap(), fs::read(&outside).unwrap());
    pack(&src, &inside).unwrap();
    assert_eq!(fs::read(&inside).unwrap(), fs::read(&outside).unwrap());
    let second = outside;

    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(&second).unwrap(),
    ));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "empty",
            "nested",
            "nested/deeper",
            "nested/deeper/weights.bin",
            "run.sh"
        ]
    );
}

#[test]
fn plain_tar_is_accepted_too() {
    let tmp = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o600);
    builder
        .append_data(&mut header, "./config.json", &b"hello"[..])
        .unwrap();
    let bytes = builder.into_inner().unwrap();
    let stats = unpack(&bytes[..], tmp.path(), &ArchiveLimits::default()).unwrap();
    assert_eq!(stats.files, 1);
    assert_eq!(fs::read(tmp.path().join("config.json")).unwrap(), b"hello");
}

fn gzipped_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn truncated_and_corrupt_archives_are_errors() {
    let bytes = gzipped_tar(&[("a.bin", &[1u8; 100_000]), ("b.bin", &[2u8; 1000])]);
    for cut in [10, bytes.len() / 2, bytes.len() - 4] {
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack(&bytes[..cut], tmp.path(), &ArchiveLimits::default()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
    // A flipped byte in the gzip CRC trailer: only caught by reading to the end of the stream.
    let mut bad_crc = bytes;
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(&bad_crc[..], tmp.path(), &ArchiveLimits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(
        &b"not an archive at all"[..],
        tmp.path(),
        &ArchiveLimits::default(),
    );
    assert!(err.is_err());
}

#[test]
fn empty_archive_and_trailing_junk() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = gzipped_tar(&[]);
    assert!(matches!(
        unpack(&empty[..], tmp.path(), &ArchiveLimits::default()),
        Err(ArchiveError::Empty)
    ));
    assert!(matches!(
        unpack(&[][..], tmp.path(), &ArchiveLimits::default()),
        Err(ArchiveError::Empty)
    ));

    // A megabyte-plus of zeros after the end marker (a cheap way to burn CPU): refused.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    builder.append_data(&mut header, "x", &b"x"[..]).unwrap();
    let mut tar_bytes = builder.into_inner().unwrap();
    tar_bytes.extend(std::iter::repeat_n(0u8, 3 << 20));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    let gz = gz.finish().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(&gz[..], tmp.path(), &ArchiveLimits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::TrailingData { .. }), "{err}");
}

#[test]
fn later_entries_replace_earlier_files() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = gzipped_tar(&[("a.txt", b"old"), ("a.txt", b"new")]);
    unpack(&bytes[..], tmp.path(), &ArchiveLimits::default()).unwrap();
    assert_eq!(fs::read(tmp.path().join("a.txt")).unwrap(), b"new");
}

#[test]
fn relative_paths() {
    assert_eq!(relative_path(Path::new("./a/b")).unwrap(), Path::new("a/b"));
    assert_eq!(relative_path(Path::new("./")).unwrap(), Path::new(""));
    assert_eq!(
        relative_path(Path::new("/etc/passwd")),
        Err(Refusal::AbsolutePath)
    );
    assert_eq!(
        relative_path(Path::new("a/../../b")),
        Err(Refusal::ParentComponent)
    );
}
