//! The try-it page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`) opens `/#image=<data URL>` on a live server, the page posts the photo as a form
//! upload, and the test reads the page's DOM: the label, the mask legend or the boxes it drew.
//! `WICK_UI_SCREENSHOTS=<dir>` also saves a screenshot per task (README's pictures).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use wick::serve::{app, AppState};

use crate::serve_clients::classifier;
use crate::serve_tasks::{detector, segmenter};

/// A 480x320 "photo": a dusk gradient with a bright 160x80 roof at (240, 40), which the test
/// models see as the building (segmentation) and the cat (detection).
fn photo() -> Result<Vec<u8>> {
    let image = image::RgbImage::from_fn(480, 320, |x, y| {
        if (240..400).contains(&x) && (40..120).contains(&y) {
            image::Rgb([230, 210, 160])
        } else {
            image::Rgb([20 + (x / 8) as u8, 40 + (y / 6) as u8, 90])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

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

/// Serves `state` on a loopback port for the browser.
async fn serve(state: AppState) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    Ok(port)
}

/// Runs Chromium on the page with `photo` and `options`; returns the DOM once scripts settle.
async fn open_page(state: AppState, photo: &[u8], options: &str, shot: &str) -> Result<String> {
    let browser = chromium()?;
    let port = serve(state).await?;
    let data_url = format!(
        "data:image/png;base64,{}",
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
    let url = format!("http://127.0.0.1:{port}/#image={encoded}{options}");
    let profile = tempfile::tempdir()?;
    let common = vec![
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--no-first-run".to_string(),
        format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=15000".to_string(),
        "--window-size=1000,640".to_string(),
    ];
    let dom_args: Vec<String> = common
        .iter()
        .cloned()
        .chain(["--dump-dom".to_string(), url.clone()])
        .collect();
    let screenshots = std::env::var_os("WICK_UI_SCREENSHOTS").map(PathBuf::from);
    let shot = shot.to_string();
    tokio::task::spawn_blocking(move || -> Result<String> {
        let output = Command::new(&browser)
            .args(&dom_args)
            .output()
            .context("running chromium")?;
        ensure!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(dir) = screenshots {
            let path = dir.join(format!("ui-{shot}.png"));
            let status = Command::new(&browser)
                .args(&common)
                .arg(format!("--screenshot={}", path.display()))
                .arg(&url)
                .output()?;
            ensure!(status.status.success(), "chromium screenshot failed");
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_classes_as_bars_with_labels_escaped() -> Result<()> {
    // The second class is named "bright <b>": it must show as text, never as markup.
    let dom = open_page(classifier(&[])?, &photo()?, "&top_k=2", "classification").await?;
    assert!(dom.contains(r#"data-state="done""#), "{dom}");
    let first = dom.find(r#"<li data-label="dark""#);
    let second = dom.find("<span>bright &lt;b&gt;</span>");
    assert!(
        first.is_some() && second.is_some() && first < second,
        "bars in score order, labels as text: {dom}"
    );
    assert!(!dom.contains("<b>"), "a label became markup");
    assert!(dom.contains("inference_ms"), "wick's timings are shown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_the_mask_with_a_legend_of_the_classes_present() -> Result<()> {
    let dom = open_page(segmenter(&[])?, &photo()?, "", "segmentation").await?;
    assert!(dom.contains(r#"data-state="done""#), "{dom}");
    // The bright 160x80 roof of the 480x320 photo is the building.
    assert!(
        dom.contains(r#"data-label="building" data-pixels="12800""#),
        "{dom}"
    );
    assert!(dom.contains(r#"data-label="background" data-pixels="140800""#));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_boxes_with_their_labels() -> Result<()> {
    let dom = open_page(detector(&[])?, &photo()?, "&threshold=0.5", "detection").await?;
    assert!(dom.contains(r#"data-state="done""#), "{dom}");
    assert!(
        dom.contains(r#"data-label="cat" data-box="240,40,400,120""#),
        "{dom}"
    );
    let dom = open_page(detector(&[])?, &photo()?, "&threshold=0.95", "none").await?;
    assert!(
        dom.contains(r#"data-state="done""#) && !dom.contains("data-box"),
        "the option reached the server: {dom}"
    );
    Ok(())
}
