//! `wick bench`: median / min / max forward time per architecture (classification or
//! segmentation) and batch size, and the
//! decode + preprocess time of one large JPEG, on this machine. The numbers in
//! `docs/performance.md` come from here.

use std::io::Cursor;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use image::{ImageFormat, Rgb, RgbImage};

use crate::cli::BenchArgs;
use crate::model::classify::{self, BuildArgs, Network};
use crate::model::layers::to_nhwc;
use crate::model::package::{preprocess_config, Package, Task};
use crate::model::precision;
use crate::model::preprocess::{
    decode, jpeg_decoder_has_simd, preprocess, DecodeLimits, PreprocessConfig,
};
use crate::model::segment::{self, SegmentationArgs};
use crate::model::weights::{synthesize, Weights};
use crate::model::{Classifier, DetectOptions, Detector, Segmenter};

const WARMUP_ITERATIONS: usize = 3;

/// Median, min and max of a set of timings.
struct Summary {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn summarise(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    Summary {
        median: samples[samples.len() / 2],
        min: samples[0],
        max: samples[samples.len() - 1],
    }
}

fn time<F: FnMut() -> Result<()>>(iterations: usize, mut f: F) -> Result<Summary> {
    for _ in 0..WARMUP_ITERATIONS {
        f()?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        f()?;
        samples.push(started.elapsed());
    }
    Ok(summarise(samples))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the command.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    ensure!(
        args.iterations > 0,
        "`--iterations` must be at least 1 (given: 0)"
    );
    ensure!(
        args.batch_sizes.iter().all(|&b| b > 0),
        "`--batch-sizes` must all be at least 1"
    );
    println!("threads: {}", rayon::current_num_threads());
    let precision = precision::effective(args.precision);
    println!("precision: {precision}");
    // Every network below is built on this thread, so all of them are packed for it.
    precision::while_loading(precision, || run_networks(args))
}

/// Loads and times the networks `args` names.
fn run_networks(args: &BenchArgs) -> Result<ExitCode> {
    let is_detector = |name: &String| Detector::has_synthetic(name);
    let detectors: Vec<Detector> = match &args.model_dir {
        Some(dir) if Package::open(dir)?.config.task == Task::Detection => {
            vec![Detector::load(dir)?]
        }
        Some(_) => Vec::new(),
        None => args
            .architectures
            .iter()
            .filter(|n| is_detector(n))
            .map(|n| Detector::synthetic(n))
            .collect::<Result<_, _>>()?,
    };
    if !detectors.is_empty() {
        bench_detectors(args, &detectors)?;
        if args.model_dir.is_some() || args.architectures.iter().all(is_detector) {
            return Ok(ExitCode::SUCCESS);
        }
        println!();
    }
    println!("| model | batch | median ms | min ms | max ms | median ms / image |");
    println!("|---|---|---|---|---|---|");
    let targets = targets(args)?;
    for (name, forward, (h, w)) in &targets {
        for &batch in &args.batch_sizes {
            let input = synthesize("input", &[batch, 3, *h, *w]);
            // On a pool thread, as `wick serve`'s engine runs it: the kernels' parallel loops
            // then fork from a worker that is awake instead of waking the pool at every layer.
            let summary = time(args.iterations, || rayon::scope(|_| forward(&input)))?;
            println!(
                "| {name} {h}x{w} | {batch} | {:.1} | {:.1} | {:.1} | {:.2} |",
                ms(summary.median),
                ms(summary.min),
                ms(summary.max),
                ms(summary.median) / batch as f64
            );
        }
    }
    bench_preprocess(args)?;
    Ok(ExitCode::SUCCESS)
}

/// A network to time: its name, one forward pass over an NCHW batch, and the input size.
type Target = (
    String,
    Box<dyn Fn(&Tensor) -> Result<()> + Send + Sync>,
    (usize, usize),
);

/// Classification and segmentation networks alike: a package (by its `task`), or each
/// `--architectures` name with synthetic weights (segmentation names build the segmentation
/// network with 21 classes, PASCAL VOC's count).
fn targets(args: &BenchArgs) -> Result<Vec<Target>> {
    let size = (args.image_size, args.image_size);
    if let Some(dir) = &args.model_dir {
        let package = Package::open(dir)?;
        if package.config.task == Task::Segmentation {
            let segmenter = Segmenter::load(dir)?;
            let name = segmenter.architecture().to_string();
            let run = move |x: &Tensor| -> Result<()> {
                segmenter.logits(x)?.sum_all()?.to_scalar::<f32>()?;
                Ok(())
            };
            return Ok(vec![(name, Box::new(run), size)]);
        }
        let classifier = Classifier::load(dir)?;
        let cfg = classifier.preprocess_config();
        let size = (cfg.input_height, cfg.input_width);
        let name = classifier.architecture().to_string();
        let network = classifier.into_network();
        return Ok(vec![(name, Box::new(move |x| forward(&network, x)), size)]);
    }
    let weights = Weights::synthetic();
    let mut targets: Vec<Target> = Vec::new();
    for name in args
        .architectures
        .iter()
        .filter(|n| !Detector::has_synthetic(n))
    {
        if segment::supported().contains(&name.as_str()) {
            let network = segment::build(&SegmentationArgs {
                name,
                weights: &weights,
                out_channels: 21,
            })?;
            let run = move |x: &Tensor| -> Result<()> {
                network
                    .forward(&to_nhwc(x)?)?
                    .sum_all()?
                    .to_scalar::<f32>()?;
                Ok(())
            };
            targets.push((name.clone(), Box::new(run), size));
        } else {
            let network = classify::build(&BuildArgs {
                name,
                weights: &weights,
                num_classes: 1000,
                config: &Default::default(),
            })?;
            targets.push((name.clone(), Box::new(move |x| forward(&network, x)), size));
        }
    }
    Ok(targets)
}

/// Per detector: the network alone (`raw_output`, batch 1 at its input size) and the whole
/// `detect` pipeline (letterbox, forward, decode, NMS) on one decoded image.
fn bench_detectors(args: &BenchArgs, detectors: &[Detector]) -> Result<()> {
    let image = match &args.image {
        Some(path) => image::open(path)
            .with_context(|| format!("reading `{}`", path.display()))?
            .to_rgb8(),
        None => decode(
            &synthetic_jpeg(1920, 1080)?,
            &DecodeLimits {
                max_pixels: 100_000_000,
            },
        )?,
    };
    println!("| detector | input | forward median ms | min | max | detect median ms | min | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for detector in detectors {
        let (h, w) = detector.input_size();
        let input = ((synthesize("input", &[1, 3, h, w]) + 1.0)? / 2.0)?;
        let forward = time(args.iterations, || {
            detector.raw_output(&input)?.sum_all()?.to_scalar::<f32>()?;
            Ok(())
        })?;
        let options = DetectOptions::default();
        let detect = time(args.iterations, || {
            detector.detect(&image, &options)?;
            Ok(())
        })?;
        println!(
            "| {} | {h}x{w} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            detector.architecture(),
            ms(forward.median),
            ms(forward.min),
            ms(forward.max),
            ms(detect.median),
            ms(detect.min),
            ms(detect.max)
        );
    }
    println!("(detect: on a {}x{} image)", image.width(), image.height());
    Ok(())
}

fn forward(network: &Network, input: &Tensor) -> Result<()> {
    network.forward(input)?.sum_all()?.to_scalar::<f32>()?;
    Ok(())
}

/// Decode + preprocess of one JPEG to the default 224x224 ImageNet transform.
fn bench_preprocess(args: &BenchArgs) -> Result<()> {
    let (bytes, what) = match &args.image {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            synthetic_jpeg(1920, 1080)?,
            "generated 1920x1080 JPEG".to_string(),
        ),
    };
    let cfg: PreprocessConfig = preprocess_config(&Default::default())?;
    let limits = DecodeLimits {
        max_pixels: 100_000_000,
    };
    let summary = time(args.iterations, || {
        let image = decode(&bytes, &limits)?;
        preprocess(&image, &cfg)?;
        Ok(())
    })?;
    println!();
    println!(
        "decode + preprocess ({what}, {} KB) -> {}x{}: median {:.2} ms, min {:.2} ms, max {:.2} ms{}",
        bytes.len() / 1024,
        cfg.input_height,
        cfg.input_width,
        ms(summary.median),
        ms(summary.min),
        ms(summary.max),
        if jpeg_decoder_has_simd() {
            ""
        } else {
            " (JPEG decoder built without SIMD: nasm was missing)"
        }
    );
    Ok(())
}

/// A photo-like test image: smooth gradients plus fine texture, so the JPEG is not trivially
/// compressible (about the entropy of a real 1080p photo at quality 90).
fn synthetic_jpeg(width: u32, height: u32) -> Result<Vec<u8>> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27;
        Rgb([
            ((x * 255 / width) as u8).wrapping_add(noise as u8),
            ((y * 255 / height) as u8).wrapping_add((noise >> 1) as u8),
            (((x + y) / 8 % 256) as u8) ^ (noise as u8),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}
