//! Segmentation images over `--max-image-pixels`, sent to the real server: a 20,000 x 20,000
//! PNG and TIFF (aerial-imagery size) are read row by row from the spooled body and answered
//! with a label map PNG written row by row, the server's peak RSS sampled and held under the
//! bounds README states; the full-resolution tiled path gives exactly the in-memory label map;
//! answers that would hold every pixel (JSON, overlays) are refused with 413.

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::http::request;
use crate::seg_train_jobs::synthetic_package;
use crate::serve_process::Server;

/// Aerial-imagery size: 400 megapixels, ten times the default `--max-image-pixels`.
const SIDE: u32 = 20_000;
/// Peak RSS bounds README states for a 20,000 x 20,000 image with a `resize_shorter_side`
/// package (MB).
const PNG_BOUND_MB: u64 = 120;
const TIFF_BOUND_MB: u64 = 140;
/// Classes of the test package (the parity fixture's head).
const CLASSES: u8 = 3;

/// A small, fast segmentation package (formula weights) with the given `segmentation` section.
fn package(dir: &Path, segmentation: &Value) -> Result<()> {
    synthetic_package(dir, "timm_lraspp_efficientnet_lite0", usize::from(CLASSES))?;
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["segmentation"] = segmentation.clone();
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(())
}

/// One row of a field pattern drawn at `side` pixels: four fields of different colours with
/// gentle gradients, defined on the unit square so every size shows the same picture.
fn pattern_row(y: u32, side: u32, row: &mut [u8]) {
    let v = y as u64 * 256 / u64::from(side);
    for (x, px) in row.chunks_exact_mut(3).enumerate() {
        let u = x as u64 * 256 / u64::from(side);
        let colour = match (u < 128, v < 128) {
            (true, true) => [30 + u / 4, 120, 40],
            (false, true) => [200, 190, 170 - v / 4],
            (true, false) => [60, 60 + v / 8, 150 + u / 4],
            (false, false) => [u, 255 - v, 90],
        };
        px.iter_mut()
            .zip(colour)
            .for_each(|(p, c)| *p = c.min(255) as u8);
    }
}

fn pattern_png(side: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Up);
    let mut png_writer = encoder.write_header()?;
    let mut writer = png_writer.stream_writer()?;
    let mut row = vec![0u8; side as usize * 3];
    for y in 0..side {
        pattern_row(y, side, &mut row);
        writer.write_all(&row)?;
    }
    writer.finish()?;
    png_writer.finish()?;
    Ok(out)
}

/// A deflate-compressed RGB TIFF in 256 x 256 tiles (how aerial GeoTIFFs are stored), written
/// a row of tiles at a time and laid out by hand: the `tiff` crate's encoder writes strips only.
fn pattern_tiff(side: u32) -> Result<Vec<u8>> {
    const TILE: u32 = 256;
    let tiles = side.div_ceil(TILE);
    let row_len = side as usize * 3;
    let mut out = b"II*\0\0\0\0\0".to_vec();
    let (mut offsets, mut counts) = (Vec::new(), Vec::new());
    let mut band = vec![0u8; TILE as usize * row_len];
    for ty in 0..tiles {
        for (i, row) in band.chunks_exact_mut(row_len).enumerate() {
            // Rows past the image pad the last row of tiles.
            pattern_row((ty * TILE + i as u32).min(side - 1), side, row);
        }
        for tx in 0..tiles {
            let mut tile = Vec::with_capacity((TILE * TILE * 3) as usize);
            for row in band.chunks_exact(row_len) {
                let x0 = (tx * TILE) as usize;
                let inside = (side as usize - x0).min(TILE as usize);
                tile.extend_from_slice(&row[x0 * 3..(x0 + inside) * 3]);
                tile.resize(tile.len() + (TILE as usize - inside) * 3, 0);
            }
            let mut deflate =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            deflate.write_all(&tile)?;
            let compressed = deflate.finish()?;
            offsets.push(u32::try_from(out.len())?);
            counts.push(u32::try_from(compressed.len())?);
            out.extend_from_slice(&compressed);
        }
    }
    let mut array = |values: &[u32]| -> Result<u32> {
        let at = u32::try_from(out.len())?;
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        Ok(at)
    };
    let offsets_at = array(&offsets)?;
    let counts_at = array(&counts)?;
    let bits_at = u32::try_from(out.len())?;
    out.extend_from_slice(&[8, 0, 8, 0, 8, 0]);
    let ifd_at = u32::try_from(out.len())?;
    out[4..8].copy_from_slice(&ifd_at.to_le_bytes());
    let n = u32::try_from(offsets.len())?;
    // (tag, type: 3 short / 4 long, count, value or offset); 8 = Deflate, 2 = RGB.
    let entries: [(u16, u16, u32, u32); 11] = [
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 3, bits_at),
        (259, 3, 1, 8),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 4, 1, TILE),
        (323, 4, 1, TILE),
        (324, 4, n, offsets_at),
        (325, 4, n, counts_at),
    ];
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    Ok(out)
}

/// A label map PNG read row by row: its size, and the label at the centre of every
/// `cell x cell` block (row-major).
fn sampled_labels(png_bytes: &[u8], cell: u32) -> Result<((u32, u32), Vec<u8>)> {
    let decoder = png::Decoder::new(Cursor::new(png_bytes));
    let mut reader = decoder.read_info()?;
    let (width, height) = (reader.info().width, reader.info().height);
    ensure!(
        reader.output_color_type() == (png::ColorType::Grayscale, png::BitDepth::Eight),
        "a grey label map"
    );
    let mut samples = Vec::new();
    let mut y = 0;
    while let Some(row) = reader.next_row()? {
        let data = row.data();
        ensure!(
            data.iter().all(|&c| c < CLASSES),
            "row {y} holds a class over {CLASSES}"
        );
        if y % cell == cell / 2 {
            samples.extend((0..width / cell).map(|i| data[(i * cell + cell / 2) as usize]));
        }
        y += 1;
    }
    ensure!(y == height, "{y} rows of {height}");
    Ok(((width, height), samples))
}

fn invoke(server: &Server, body: &[u8], headers: &[(&str, &str)]) -> Result<crate::http::Reply> {
    let mut all = vec![("Content-Type", "application/x-image")];
    all.extend_from_slice(headers);
    request(server.addr, "POST", "/invocations", &all, body)
}

/// Sends the 20,000-pixel image, checks its answer against the small version's, returns the
/// server's peak RSS in MB.
fn segment_large(format: &str, large: &[u8], small: &[u8]) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    package(dir.path(), &json!({"resize_shorter_side": 256}))?;
    // An asynchronous endpoint's payload limit (1 GB) and timeout; a low spooling threshold,
    // so the body is spooled to $TMPDIR and read back from there.
    let server = Server::start(
        dir.path(),
        &[
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1024"),
            ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "3600"),
            ("WICK_SPOOL_THRESHOLD_MB", "1"),
        ],
    )?;
    server.wait_ready()?;
    let idle_mb = server.peak_rss_mb()?;
    let started = Instant::now();
    let reply = invoke(&server, large, &[("Accept", "image/png")])?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        reply.status == 200,
        "{format}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    let peak_mb = server.peak_rss_mb()?;
    eprintln!(
        "{format} {SIDE}x{SIDE} ({} bytes): answered in {seconds:.1} s with a {} byte label map; peak RSS {peak_mb} MB (idle {idle_mb} MB)",
        large.len(),
        reply.body.len()
    );
    let cell = SIDE / 2000;
    let (size, big) = sampled_labels(&reply.body, cell)?;
    ensure!(size == (SIDE, SIDE), "{format}: label map {size:?}");
    // The same picture at 2,000 x 2,000 goes through the in-memory path: the two label maps
    // agree wherever the downscaled images do, which is nearly everywhere.
    let reply = invoke(&server, small, &[("Accept", "image/png")])?;
    ensure!(reply.status == 200, "small: {}", reply.status);
    let (size, small_labels) = sampled_labels(&reply.body, 1)?;
    ensure!(size == (2000, 2000), "small label map {size:?}");
    let agreeing = big
        .iter()
        .zip(&small_labels)
        .filter(|(a, b)| a == b)
        .count();
    ensure!(
        agreeing * 100 >= big.len() * 95,
        "{format}: only {agreeing} of {} sampled pixels agree with the in-memory answer",
        big.len()
    );
    let classes: std::collections::BTreeSet<u8> = big.iter().copied().collect();
    ensure!(
        classes.len() > 1,
        "{format}: one class everywhere ({classes:?})"
    );
    // Answers that would hold every pixel are refused, naming the one that works.
    for (accept, extra) in [("application/json", ""), ("image/png", "output=overlay")] {
        let reply = invoke(
            &server,
            large,
            &[
                ("Accept", accept),
                ("X-Amzn-SageMaker-Custom-Attributes", extra),
            ],
        )?;
        let body = reply.json()?;
        ensure!(
            reply.status == 413 && body["error"].as_str().unwrap_or("").contains("image/png"),
            "{format} {accept} {extra}: {} {body}",
            reply.status
        );
    }
    Ok(peak_mb)
}

#[test]
fn a_20000_pixel_png_and_tiff_are_segmented_with_bounded_memory() -> Result<()> {
    let small = pattern_png(2000)?;
    let png_peak = segment_large("PNG", &pattern_png(SIDE)?, &small)?;
    let tiff_peak = segment_large("TIFF", &pattern_tiff(SIDE)?, &small)?;
    ensure!(png_peak < PNG_BOUND_MB, "PNG: peak RSS {png_peak} MB");
    ensure!(tiff_peak < TIFF_BOUND_MB, "TIFF: peak RSS {tiff_peak} MB");
    Ok(())
}

#[test]
fn full_resolution_tiles_stream_to_the_in_memory_label_map() -> Result<()> {
    let dir = tempfile::tempdir()?;
    package(dir.path(), &json!({"tile_size": 128, "tile_overlap": 32}))?;
    // A limit of 0.1 MP sends a 600x400 image down the streamed path.
    let server = Server::start(
        dir.path(),
        &[
            ("WICK_MAX_IMAGE_PIXELS", "100000"),
            ("WICK_MAX_STREAMED_IMAGE_PIXELS", "300000"),
        ],
    )?;
    server.wait_ready()?;
    let image = image::RgbImage::from_fn(600, 400, |x, y| {
        let mut px = [0u8; 3];
        let mut row = vec![0u8; 600 * 3];
        pattern_row(y, 400, &mut row);
        px.copy_from_slice(&row[x as usize * 3..][..3]);
        image::Rgb(px)
    });
    let mut png_bytes = Cursor::new(Vec::new());
    image.write_to(&mut png_bytes, image::ImageFormat::Png)?;
    let reply = invoke(&server, png_bytes.get_ref(), &[("Accept", "image/png")])?;
    ensure!(
        reply.status == 200,
        "{} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    let streamed = image::load_from_memory(&reply.body)?.to_luma8();
    let expected = wick::model::Segmenter::load(dir.path())?.segment(&image, None)?;
    ensure!(streamed.dimensions() == (600, 400));
    ensure!(
        streamed.as_raw() == &expected.classes,
        "the streamed label map differs from the in-memory one"
    );
    // Over the streamed limit: 413 naming both settings.
    let big = image::RgbImage::new(700, 500);
    let mut big_png = Cursor::new(Vec::new());
    big.write_to(&mut big_png, image::ImageFormat::Png)?;
    let reply = invoke(&server, big_png.get_ref(), &[("Accept", "image/png")])?;
    let body = reply.json()?;
    let message = body["error"].as_str().context("an error")?;
    ensure!(
        reply.status == 413 && message.contains("WICK_MAX_STREAMED_IMAGE_PIXELS"),
        "{} {body}",
        reply.status
    );
    Ok(())
}
