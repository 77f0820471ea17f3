//! The try-it page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`) opens `/#image=<data URL>` on a live server, the page posts the photo as a form
//! upload, and the test reads the page's DOM: the bars, the mask legend or the boxes it drew.
//! Real networks behind the real `wick serve` binary: the ImageNet EfficientNet-Lite0 on the
//! real photo (its top label is PyTorch's), LR-ASPP MobileNetV3 and YOLOv8n with formula
//! weights (the truth is what the same server's `/invocations` answers for the same photo and
//! options). A small in-process classifier carries a label with markup, to prove labels are
//! shown as text. `WICK_UI_SCREENSHOTS=<dir>` also saves a screenshot per task (README's
//! pictures).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::{json, Value};
use wick::model::weights::{synthesize, Weights};
use wick::serve::{app, AppState};

use crate::http::request;
use crate::serve_clients::{classifier, form, Part, BOUNDARY};
use crate::serve_process::Server;
use crate::support::{fixture, lite0_package};

/// Longest a page may take, wall clock, before the test gives up on the browser.
const PAGE_DEADLINE: Duration = Duration::from_secs(120);

fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("WICK_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let found = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(
        found,
        "headless Chromium is missing: `apt-get install chromium` (.ci/run does this) or set WICK_CHROMIUM"
    );
    Ok(path)
}

/// `http://127.0.0.1:<port>/#image=<data URL><options>`: the page picks the photo from its
/// fragment and predicts at once.
fn page_url(port: u16, photo: &[u8], media_type: &str, options: &str) -> String {
    let data_url = format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(photo)
    );
    // '+' would read as a space in the fragment's query syntax.
    let encoded: String = data_url
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            other => other.to_string(),
        })
        .collect();
    format!("http://127.0.0.1:{port}/#image={encoded}{options}")
}

/// Runs Chromium with `args`, killing it past [`PAGE_DEADLINE`]; returns its stdout.
fn run_chromium(args: &[String]) -> Result<String> {
    let mut child = Command::new(chromium()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running chromium")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > PAGE_DEADLINE {
            child.kill()?;
            child.wait()?;
            bail!("chromium did not finish the page within {PAGE_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().map_err(|_| anyhow::anyhow!("stdout reader"))??;
    let stderr = err.join().map_err(|_| anyhow::anyhow!("stderr reader"))??;
    ensure!(status.success(), "chromium failed ({status}): {stderr}");
    Ok(stdout)
}

/// Opens the page on `port` with `photo` and `options`; returns the DOM once the page has
/// settled. No fixed wait: with `--virtual-time-budget` the browser's clock stands still while
/// a fetch is pending, so the DOM is dumped only after the answer came back and was drawn
/// (the budget covers the page's own timers). `shot` names the screenshot, when one is asked.
fn open_page(
    port: u16,
    photo: &[u8],
    media_type: &str,
    options: &str,
    shot: Option<&str>,
) -> Result<String> {
    let url = page_url(port, photo, media_type, options);
    let profile = tempfile::tempdir()?;
    let common = vec![
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--no-first-run".to_string(),
        format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=5000".to_string(),
        "--window-size=1000,640".to_string(),
    ];
    let mut dom_args = common.clone();
    dom_args.extend(["--dump-dom".to_string(), url.clone()]);
    let dom = run_chromium(&dom_args)?;
    ensure!(
        dom.contains(r#"data-state="done""#),
        "the page did not reach its answer: {dom}"
    );
    let dir = std::env::var_os("WICK_UI_SCREENSHOTS").map(PathBuf::from);
    if let (Some(dir), Some(shot)) = (dir, shot) {
        let mut shot_args = common;
        let path = dir.join(format!("ui-{shot}.png"));
        shot_args.extend([format!("--screenshot={}", path.display()), url]);
        run_chromium(&shot_args)?;
    }
    Ok(dom)
}

/// Undoes the HTML serialiser's escapes in text and attribute values.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The `data-*` attributes of each `<li>` in the list with `id`, in page order.
fn list_items(dom: &str, id: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let open = dom
        .find(&format!(r#"id="{id}""#))
        .with_context(|| format!("no #{id} in the page: {dom}"))?;
    let rest = &dom[open..];
    let end = [rest.find("</ul>"), rest.find("</ol>")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    let list = &rest[..end];
    let mut items = Vec::new();
    for item in list.split("<li ").skip(1) {
        let tag = &item[..item.find('>').context("unclosed <li>")?];
        let mut attributes = BTreeMap::new();
        for pair in tag.split("\" ") {
            if let Some((name, value)) = pair.trim().split_once("=\"") {
                if let Some(name) = name.strip_prefix("data-") {
                    attributes.insert(name.to_string(), unescape(value.trim_end_matches('"')));
                }
            }
        }
        items.push(attributes);
    }
    Ok(items)
}

/// The raw JSON answer the page shows.
fn shown_json(dom: &str) -> Result<Value> {
    let start = dom.find(r#"<pre id="raw">"#).context("no raw JSON")? + r#"<pre id="raw">"#.len();
    let end = start + dom[start..].find("</pre>").context("unclosed raw JSON")?;
    Ok(serde_json::from_str(&unescape(&dom[start..end]))?)
}

/// `wick serve` on `package`, ready.
fn ready_server(package: &Path) -> Result<Server> {
    let server = Server::start(package, &[])?;
    server.wait_ready()?;
    Ok(server)
}

/// What the server's `/invocations` answers for `photo` sent as the page sends it: a form
/// upload with the options as fields.
fn api_answer(server: &Server, photo: &[u8], fields: &[(&str, &str)]) -> Result<Value> {
    let mut parts = vec![Part::File("file", "photo", photo)];
    parts.extend(fields.iter().map(|(name, value)| Part::Text(name, value)));
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[
            ("Content-Type", &content_type),
            ("Accept", "application/json"),
        ],
        &form(&parts),
    )?;
    ensure!(
        reply.status == 200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// A package of the network a parity fixture describes (its tensor names and shapes), with the
/// suite's formula weights: a real-size network without downloading weights.
fn formula_package(fixture_json: &str, config: &Value) -> Result<tempfile::TempDir> {
    #[derive(Deserialize)]
    struct Described {
        tensors: Vec<(String, Vec<usize>)>,
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture_json);
    let described: Described = serde_json::from_slice(&std::fs::read(&path)?)?;
    let tensors: HashMap<String, Tensor> = described
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    let dir = tempfile::tempdir()?;
    Weights::from_tensors(tensors).save_safetensors(&dir.path().join("model.safetensors"))?;
    std::fs::write(dir.path().join("config.json"), config.to_string())?;
    Ok(dir)
}

/// A number as JavaScript prints it (`String(n)`): integers without a fraction, others in
/// their shortest round-trip form, as Rust prints them (no exponent below 1e21).
fn js_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e21 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

fn chelsea_jpeg() -> Result<Vec<u8>> {
    let path = fixture("chelsea.jpg");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `WICK_UI=false` in the environment (as a container would set it) turns off the page and
/// the API description of the real server; the SageMaker routes stay.
#[test]
fn the_wick_ui_variable_turns_the_page_off_in_the_real_server() -> Result<()> {
    let server = Server::start(&lite0_package()?, &[("WICK_UI", "false")])?;
    server.wait_ready()?;
    for path in ["/", "/openapi.json", "/ui/page.js"] {
        let reply = request(server.addr, "GET", path, &[], &[])?;
        assert_eq!(reply.status, 404, "{path}");
    }
    assert_eq!(request(server.addr, "GET", "/ping", &[], &[])?.status, 200);
    Ok(())
}

#[test]
fn the_page_shows_lite0s_imagenet_label_for_the_real_photo() -> Result<()> {
    let server = ready_server(&lite0_package()?)?;
    let photo = chelsea_jpeg()?;
    let dom = open_page(
        server.addr.port(),
        &photo,
        "image/jpeg",
        "&top_k=3",
        Some("classification"),
    )?;
    let api = api_answer(&server, &photo, &[("top_k", "3")])?;
    let bars: Vec<String> = list_items(&dom, "bars")?
        .into_iter()
        .map(|item| item["label"].clone())
        .collect();
    let answered: Vec<&str> = api
        .as_array()
        .context("a list of classes")?
        .iter()
        .filter_map(|class| class["label"].as_str())
        .collect();
    assert_eq!(bars, answered, "the bars are the API's classes, in order");
    let reference: Value = serde_json::from_slice(&std::fs::read(fixture("reference_top5.json"))?)?;
    let pytorch_top1 = &reference["images"]["chelsea.jpg"]["top5"][0]["label"];
    assert_eq!(bars[0], pytorch_top1.as_str().context("a label")?);
    assert_eq!(shown_json(&dom)?, api, "the raw JSON is the API's answer");
    assert!(dom.contains("inference_ms"), "wick's timings are shown");
    Ok(())
}

#[test]
fn the_page_draws_lraspps_mask_with_a_legend_of_the_classes_present() -> Result<()> {
    let config = json!({"architecture": "lraspp_mobilenet_v3_large", "task": "segmentation",
        "num_classes": 21});
    let package = formula_package(
        "tests/fixtures/segmentation/torchvision_lraspp_mobilenet_v3_large.json",
        &config,
    )?;
    let server = ready_server(package.path())?;
    let photo = chelsea_jpeg()?;
    let dom = open_page(
        server.addr.port(),
        &photo,
        "image/jpeg",
        "",
        Some("segmentation"),
    )?;
    // The page asks for RLE masks, as here.
    let api = api_answer(&server, &photo, &[("mask_format", "rle")])?;
    let classes = api.as_array().context("a list of classes")?;
    let legend = list_items(&dom, "legend")?;
    assert_eq!(
        legend.len(),
        classes.len(),
        "one legend entry per class present"
    );
    let mut total = 0;
    for (item, class) in legend.iter().zip(classes) {
        let pixels = class["pixels"].as_u64().context("pixels")?;
        assert_eq!(item["label"], class["label"].as_str().context("label")?);
        assert_eq!(item["pixels"], pixels.to_string(), "{item:?}");
        assert_eq!(
            item["drawn"],
            pixels.to_string(),
            "the page tinted each of the class's pixels: {item:?}"
        );
        total += pixels;
    }
    assert_eq!(total, 451 * 300, "the mask covers the photo");
    Ok(())
}

#[test]
fn the_page_draws_yolov8n_boxes_with_their_labels() -> Result<()> {
    let config = json!({"architecture": "yolov8n", "task": "detection"});
    let package = formula_package("tests/fixtures/detection/yolov8n.json", &config)?;
    let server = ready_server(package.path())?;
    let photo = chelsea_jpeg()?;
    let dom = open_page(
        server.addr.port(),
        &photo,
        "image/jpeg",
        "&threshold=0.5485",
        Some("detection"),
    )?;
    // The formula weights score every box near 0.54; this threshold keeps a few of them.
    let api = api_answer(&server, &photo, &[("threshold", "0.5485")])?;
    let boxes = api.as_array().context("a list of boxes")?;
    ensure!(
        !boxes.is_empty(),
        "the network found nothing to draw: {api}"
    );
    let default = api_answer(&server, &photo, &[])?;
    let default_count = default.as_array().map_or(0, Vec::len);
    assert!(
        default_count > boxes.len(),
        "the page's threshold matters: {default_count} boxes at the default"
    );
    let drawn = list_items(&dom, "boxes")?;
    assert_eq!(drawn.len(), boxes.len(), "one drawn box per answered box");
    for (item, answered) in drawn.iter().zip(boxes) {
        let corner = |name: &str| js_number(answered["box"][name].as_f64().unwrap_or(f64::NAN));
        let coordinates = ["xmin", "ymin", "xmax", "ymax"].map(corner).join(",");
        assert_eq!(item["label"], answered["label"].as_str().context("label")?);
        assert_eq!(item["box"], coordinates, "{item:?}");
    }
    assert_eq!(shown_json(&dom)?, api, "the raw JSON is the API's answer");
    Ok(())
}

/// Serves `state` in-process on a loopback port for the browser.
async fn serve(state: AppState) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    Ok(port)
}

/// A 48x32 bright PNG: the small test classifier ranks "dark" first for it.
fn small_png() -> Result<Vec<u8>> {
    let image =
        image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([20 + x as u8, 40 + y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_with_markup_show_as_text() -> Result<()> {
    // The small classifier's second class is named "bright <b>": text, never markup.
    let port = serve(classifier(&[])?).await?;
    let photo = small_png()?;
    let dom =
        tokio::task::spawn_blocking(move || open_page(port, &photo, "image/png", "&top_k=2", None))
            .await??;
    let labels: Vec<String> = list_items(&dom, "bars")?
        .into_iter()
        .map(|item| item["label"].clone())
        .collect();
    assert_eq!(labels, ["dark", "bright <b>"], "bars in score order");
    assert!(dom.contains("<span>bright &lt;b&gt;</span>"), "{dom}");
    assert!(!dom.contains("<b>"), "a label became markup");
    Ok(())
}
