//! `GET /openapi.json`: a valid OpenAPI 3.1 document (checked by openapi-spec-validator, which
//! `.ci/run` installs into a venv), listing every route the router serves, and describing the
//! answers the handlers really give (live answers are validated against its schemas).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use wick::serve::{app, AppState};

use crate::serve_clients::classifier;
use crate::serve_tasks::{detector, photo_png, segmenter};

/// Every route wick serves with the page on, as `(method, path)`.
const ROUTES: [(&str, &str); 11] = [
    ("get", "/ping"),
    ("post", "/invocations"),
    ("get", "/execution-parameters"),
    ("get", "/metrics"),
    ("post", "/predict"),
    ("post", "/model/predict"),
    ("get", "/model/metadata"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/ui/page.js"),
    ("get", "/ui/page.css"),
];

/// The venv's Python with openapi-spec-validator; its absence fails the test with the fix.
fn validator_python() -> Result<PathBuf> {
    let venv = std::env::var_os("WICK_OPENAPI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wick-openapi-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        ok,
        "openapi-spec-validator is missing: `python3 -m venv {0} && {0}/bin/pip install openapi-spec-validator` (.ci/run does this)",
        venv.display()
    );
    Ok(python)
}

async fn get(state: &AppState, path: &str) -> Result<(StatusCode, Vec<u8>)> {
    let response = app(state.clone())
        .oneshot(Request::get(path).body(Body::empty())?)
        .await?;
    let status = response.status();
    Ok((
        status,
        response.into_body().collect().await?.to_bytes().to_vec(),
    ))
}

async fn post(state: &AppState, attributes: &str, body: Vec<u8>) -> Result<Value> {
    let response = app(state.clone())
        .oneshot(
            Request::post("/invocations")
                .header("content-type", "image/png")
                .header("x-amzn-sagemaker-custom-attributes", attributes)
                .body(Body::from(body))?,
        )
        .await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

/// Validates the document, then each `(schema name, instance)` against its component schema.
fn validate(python: &PathBuf, document: &Value, instances: &[(&str, Value)]) -> Result<String> {
    const SCRIPT: &str = r##"
import json, sys
from openapi_spec_validator import validate
from openapi_schema_validator import validate as validate_instance, OAS31Validator
doc = json.load(open(sys.argv[1]))
validate(doc)
for name, instance in json.load(open(sys.argv[2])):
    validate_instance(instance, {"$ref": "#/components/schemas/" + name, "components": doc["components"]}, cls=OAS31Validator)
print("valid", doc["openapi"], len(doc["paths"]))
"##;
    let dir = tempfile::tempdir()?;
    let doc_path = dir.path().join("openapi.json");
    let instances_path = dir.path().join("instances.json");
    std::fs::write(&doc_path, serde_json::to_vec(document)?)?;
    std::fs::write(&instances_path, serde_json::to_vec(&json!(instances))?)?;
    let output = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&doc_path)
        .arg(&instances_path)
        .output()
        .context("running the OpenAPI validator")?;
    ensure!(
        output.status.success(),
        "the validator refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[tokio::test]
async fn openapi_json_is_valid_3_1_lists_every_route_and_matches_real_answers() -> Result<()> {
    let python = validator_python()?;
    let state = detector(&[])?;
    let (status, body) = get(&state, "/openapi.json").await?;
    assert_eq!(status, StatusCode::OK);
    let document: Value = serde_json::from_slice(&body)?;
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));

    // Both ways: each route served is documented, and each documented route is served.
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    for (method, path) in ROUTES {
        assert!(
            paths.get(path).is_some_and(|p| p.get(method).is_some()),
            "{method} {path} is not in /openapi.json"
        );
    }
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (method, path) in ROUTES {
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(path)
            .body(Body::empty())?;
        let response = app(state.clone()).oneshot(request).await?;
        assert!(
            ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&response.status()),
            "{method} {path} is documented but not served"
        );
    }
    // Options, task shapes and error types are all described.
    let schemas = &document["components"]["schemas"];
    for option in [
        "top_k",
        "threshold",
        "iou",
        "max_detections",
        "classes",
        "format",
        "mask_format",
        "output",
        "palette",
    ] {
        assert!(
            schemas["Options"]["properties"].get(option).is_some(),
            "option {option}"
        );
    }
    assert!(schemas["ErrorType"]["enum"]
        .as_array()
        .is_some_and(|e| e.len() >= 10));
    let invocations = &document["paths"]["/invocations"]["post"];
    for content_type in [
        "image/jpeg",
        "application/json",
        "application/x-npy",
        "multipart/form-data",
    ] {
        assert!(
            invocations["requestBody"]["content"]
                .get(content_type)
                .is_some(),
            "{content_type}"
        );
    }

    // Live answers of each task and shape fit the schemas the document gives them.
    let photo = photo_png()?;
    let mut instances = vec![
        ("Answer", post(&state, "", photo.clone()).await?),
        (
            "Answer",
            post(&state, "format=sagemaker", photo.clone()).await?,
        ),
        (
            "ErrorBody",
            post(&state, "", b"not an image".to_vec()).await?,
        ),
        ("ErrorBody", post(&state, "iou=7", photo.clone()).await?),
    ];
    let seg = segmenter(&[])?;
    instances.push(("Answer", post(&seg, "", photo.clone()).await?));
    instances.push((
        "Answer",
        post(&seg, "mask_format=rle", photo.clone()).await?,
    ));
    instances.push(("Answer", post(&seg, "format=seg_map", photo.clone()).await?));
    instances.push(("Answer", post(&classifier(&[])?, "", photo.clone()).await?));
    let (_, card) = get(&state, "/model/metadata").await?;
    instances.push(("ModelCard", serde_json::from_slice(&card)?));
    let summary = validate(&python, &document, &instances)?;
    assert!(summary.starts_with("valid 3.1"), "{summary}");
    Ok(())
}

#[tokio::test]
async fn ui_false_turns_off_the_page_and_the_description() -> Result<()> {
    let state = detector(&["--ui", "false"])?;
    for path in ["/", "/openapi.json", "/ui/page.js"] {
        let (status, _) = get(&state, path).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(get(&state, "/ping").await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_page_is_small_self_contained_and_locked_down() -> Result<()> {
    let state = detector(&[])?;
    let response = app(state.clone())
        .oneshot(Request::get("/").body(Body::empty())?)
        .await?;
    let policy = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    let mut total_bytes = 0;
    for path in ["/", "/ui/page.js", "/ui/page.css"] {
        let (status, body) = get(&state, path).await?;
        assert_eq!(status, StatusCode::OK, "{path}");
        let text = String::from_utf8(body)?;
        // Offline: nothing is fetched from elsewhere, no inline script or HTML from answers.
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("@import"),
            "{path} reaches outside"
        );
        assert!(
            !text.contains("innerHTML") && !text.contains("<script>"),
            "{path}"
        );
        total_bytes += text.len();
    }
    assert!(
        total_bytes < 16 * 1024,
        "the page is {total_bytes} bytes (README says under 16 kB)"
    );
    Ok(())
}
