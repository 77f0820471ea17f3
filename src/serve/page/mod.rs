//! The try-it page at `/`: one HTML file, one script and one style sheet compiled into the
//! binary (about 11 kB together), with no CDN, font or other outside request, so it works on an
//! endpoint without internet access. It posts the photo to `/invocations` as a form upload.
//! Served with a Content-Security-Policy that allows only this origin's script and style.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// No inline script or style, no other origin; the photo is shown from a `blob:` URL and the
/// answer fetched from this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(crate) fn html() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

/// `GET /ui/page.js`.
pub(crate) fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/page.css`.
pub(crate) fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
