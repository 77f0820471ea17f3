//! Hostile archives: path traversal, absolute paths, symlink and hard-link escapes, devices and
//! FIFOs, byte / entry / metadata bombs. Each is refused with an error naming the entry, and
//! nothing appears outside the destination (next to it sits an `outside` directory with a
//! `secret` file that must stay untouched and alone).

use std::io::Read;
use std::path::Path;

use anyhow::Result;
use tar::EntryType;
use wick::artifacts::{archive, fetch, ArchiveLimits, ArtifactError, ArtifactUri, FetchOptions};

use super::server::S3Server;

enum Kind<'a> {
    File(&'a [u8]),
    Zeros(u64),
    Dir,
    Symlink(&'a str),
    HardLink(&'a str),
    Special(EntryType),
    Pax(usize),
}

/// A `.tar.gz` whose headers hold exactly the names given (the tar crate's own setters refuse
/// `..` and absolute paths, so the header bytes are written directly).
fn tarball(entries: &[(&str, Kind<'_>)]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, kind) in entries {
        let mut header = tar::Header::new_gnu();
        let (entry_type, link, size) = match kind {
            Kind::File(data) => (EntryType::Regular, "", data.len() as u64),
            Kind::Zeros(size) => (EntryType::Regular, "", *size),
            Kind::Dir => (EntryType::Directory, "", 0),
            Kind::Symlink(target) => (EntryType::Symlink, *target, 0),
            Kind::HardLink(target) => (EntryType::Link, *target, 0),
            Kind::Special(kind) => (*kind, "", 0),
            Kind::Pax(size) => (EntryType::XHeader, "", *size as u64),
        };
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(entry_type);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        match kind {
            Kind::File(data) => builder.append(&header, *data)?,
            Kind::Zeros(size) => builder.append(&header, std::io::repeat(0).take(*size))?,
            Kind::Pax(size) => builder.append(&header, &vec![b'a'; *size][..])?,
            _ => builder.append(&header, std::io::empty())?,
        }
    }
    Ok(builder.into_inner()?.finish()?)
}

/// `(label, entries, the refused entry's name, the reason)`.
type Case<'a> = (&'a str, Vec<(&'a str, Kind<'a>)>, &'a str, &'a str);

/// `root/dest` (empty) and `root/outside/secret`.
fn arena() -> Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("dest"))?;
    std::fs::create_dir(root.path().join("outside"))?;
    std::fs::write(root.path().join("outside/secret"), "secret")?;
    Ok(root)
}

fn assert_outside_untouched(root: &Path) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(
        names,
        ["dest", "outside"],
        "something appeared next to dest"
    );
    let outside: Vec<_> = std::fs::read_dir(root.join("outside"))?.collect::<Result<_, _>>()?;
    assert_eq!(outside.len(), 1, "something appeared in outside/");
    assert_eq!(
        std::fs::read_to_string(root.join("outside/secret"))?,
        "secret"
    );
    Ok(())
}

fn small_limits() -> ArchiveLimits {
    ArchiveLimits {
        max_bytes: 1 << 20,
        max_entries: 20,
    }
}

#[test]
fn hostile_entries_are_refused_and_nothing_lands_outside() -> Result<()> {
    let many: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    let mut too_many: Vec<(&str, Kind<'_>)> = many
        .iter()
        .map(|name| (name.as_str(), Kind::File(b"x")))
        .collect();
    too_many.insert(0, ("config.json", Kind::File(b"{}")));
    let arena_root = arena()?;
    let abs = format!("{}/outside/abs.txt", arena_root.path().display());
    let abs_link = format!("{}/outside", arena_root.path().display());

    let cases: Vec<Case<'_>> = vec![
        (
            "traversal",
            vec![("../outside/evil.txt", Kind::File(b"pwned"))],
            "../outside/evil.txt",
            "`..`",
        ),
        (
            "nested traversal",
            vec![
                ("ok/", Kind::Dir),
                ("ok/../../outside/evil.txt", Kind::File(b"pwned")),
            ],
            "ok/../../outside/evil.txt",
            "`..`",
        ),
        (
            "absolute path",
            vec![(&abs, Kind::File(b"pwned"))],
            &abs,
            "absolute",
        ),
        (
            "symlink escape",
            vec![
                ("link", Kind::Symlink("../outside")),
                ("link/evil.txt", Kind::File(b"pwned")),
            ],
            "link",
            "outside the destination",
        ),
        (
            "absolute symlink",
            vec![("link", Kind::Symlink(&abs_link))],
            "link",
            "outside the destination",
        ),
        (
            // Lexically `outside/secret` inside dest, but `s` is dest itself, so `s/..` leaves.
            "symlink escape through another symlink",
            vec![
                ("s", Kind::Symlink(".")),
                ("l", Kind::Symlink("s/../outside/secret")),
            ],
            "`l`",
            "outside the destination",
        ),
        (
            "writing through a symlinked directory",
            vec![
                ("a", Kind::Symlink(".")),
                ("a/b/", Kind::Dir),
                ("a/b/l", Kind::Symlink("../../outside")),
                ("a/b/l/evil.txt", Kind::File(b"pwned")),
            ],
            "a/b/",
            "passes through the symlink `a`",
        ),
        (
            "hard link escape",
            vec![("h", Kind::HardLink("../outside/secret"))],
            "`h`",
            "outside the destination",
        ),
        (
            "absolute hard link",
            vec![("h", Kind::HardLink("/etc/passwd"))],
            "`h`",
            "outside the destination",
        ),
        (
            "hard link to nothing",
            vec![("h", Kind::HardLink("missing"))],
            "`h`",
            "not a regular file",
        ),
        (
            "character device",
            vec![("null", Kind::Special(EntryType::Char))],
            "null",
            "device",
        ),
        (
            "block device",
            vec![("sda", Kind::Special(EntryType::Block))],
            "sda",
            "device",
        ),
        (
            "fifo",
            vec![("pipe", Kind::Special(EntryType::Fifo))],
            "pipe",
            "FIFO",
        ),
        (
            // 200 MB of zeros compress to ~200 KB: refused from the header, before writing.
            "tar bomb",
            vec![
                ("config.json", Kind::File(b"{}")),
                ("bomb.bin", Kind::Zeros(200_000_000)),
            ],
            "bomb.bin",
            "exceed 1048576 bytes",
        ),
        (
            "many files over the byte cap",
            vec![
                ("a.bin", Kind::Zeros(400_000)),
                ("b.bin", Kind::Zeros(400_000)),
                ("c.bin", Kind::Zeros(400_000)),
            ],
            "c.bin",
            "exceed 1048576 bytes",
        ),
        (
            "over the entry cap",
            too_many,
            "f19",
            "more than 20 entries",
        ),
        (
            "metadata bomb",
            vec![
                ("config.json", Kind::File(b"{}")),
                ("pax", Kind::Pax(3 << 20)),
                ("x", Kind::File(b"x")),
            ],
            "config.json",
            "metadata",
        ),
    ];

    for (label, entries, entry, reason) in cases {
        let bytes = tarball(&entries)?;
        let root = arena()?;
        let err = archive::unpack(&bytes[..], &root.path().join("dest"), &small_limits())
            .expect_err(label)
            .to_string();
        assert!(err.contains(entry), "{label}: `{entry}` not in: {err}");
        assert!(err.contains(reason), "{label}: `{reason}` not in: {err}");
        assert_outside_untouched(root.path())?;
    }
    Ok(())
}

#[test]
fn a_file_replacing_a_symlink_does_not_write_through_it() -> Result<()> {
    let root = arena()?;
    let bytes = tarball(&[
        ("sub/target", Kind::File(b"original")),
        ("cfg", Kind::Symlink("sub/target")),
        ("cfg", Kind::File(b"replacement")),
    ])?;
    let dest = root.path().join("dest");
    archive::unpack(&bytes[..], &dest, &small_limits())?;
    assert_eq!(std::fs::read(dest.join("sub/target"))?, b"original");
    assert!(std::fs::symlink_metadata(dest.join("cfg"))?.is_file());
    assert_eq!(std::fs::read(dest.join("cfg"))?, b"replacement");
    // Links that stay inside are fine.
    let bytes = tarball(&[
        ("weights/real.bin", Kind::File(b"w")),
        ("model.bin", Kind::Symlink("weights/real.bin")),
        ("copy.bin", Kind::HardLink("weights/real.bin")),
    ])?;
    let root = arena()?;
    let dest = root.path().join("dest");
    archive::unpack(&bytes[..], &dest, &small_limits())?;
    assert_eq!(std::fs::read(dest.join("model.bin"))?, b"w");
    assert_eq!(std::fs::read(dest.join("copy.bin"))?, b"w");
    assert_outside_untouched(root.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_refuses_hostile_archives_and_cleans_up() -> Result<()> {
    let traversal = tarball(&[
        ("config.json", Kind::File(b"{}")),
        ("../evil.txt", Kind::File(b"pwned")),
    ])?;
    let scratch = tempfile::tempdir()?;
    let sources = tempfile::tempdir()?;

    // A local archive, and a model directory holding only SageMaker's model.tar.gz.
    let file = sources.path().join("evil.tar.gz");
    std::fs::write(&file, &traversal)?;
    let model_dir = sources.path().join("opt-ml-model");
    std::fs::create_dir(&model_dir)?;
    std::fs::write(model_dir.join("model.tar.gz"), &traversal)?;
    let options = FetchOptions {
        scratch_parent: Some(scratch.path().to_owned()),
        ..FetchOptions::default()
    };
    for source in [&file, &model_dir] {
        let uri = ArtifactUri::Local(source.clone());
        let err = fetch(&uri, &options).await.expect_err("refused");
        assert!(matches!(err, ArtifactError::Archive { .. }), "{err}");
        assert!(err.to_string().contains("`../evil.txt`"), "{err}");
    }

    // The same archive from S3, streamed.
    let server = S3Server::start().await?;
    server.bucket("bkt")?;
    server.seed("bkt", "evil.tar.gz", &traversal)?;
    let err = fetch(
        &"s3://bkt/evil.tar.gz".parse()?,
        &server.options(scratch.path()),
    )
    .await
    .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("`s3://bkt/evil.tar.gz`"), "{message}");
    assert!(message.contains("`../evil.txt`"), "{message}");

    // No scratch directory left, nothing written next to it.
    let left: Vec<_> = std::fs::read_dir(scratch.path())?.collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
