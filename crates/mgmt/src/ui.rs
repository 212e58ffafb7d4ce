//! The web UI: a single page written by hand (HTML, CSS and ES modules, no build step),
//! embedded in the binary and served at `/` and `/ui/{file}`. It is a client of `/api` and
//! nothing else; see `docs/ui.md`.
//!
//! Cache policy: every asset is `no-cache` with a strong `ETag` made from its bytes, so a
//! browser revalidates on each load (a 304 costs a round trip, no body) and never runs a
//! stale `app.js` against a newer `index.html` after an upgrade.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// One embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset =
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_str!("../ui/index.html") };

const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../ui/app.js") },
    Asset { name: "lib.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../ui/lib.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_str!("../ui/style.css") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_str!("../ui/favicon.svg") },
];

/// `/` and `/ui/{file}`, without authentication (the page asks for credentials itself
/// and sends them to `/api`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => ApiError::not_found().into_response(),
    }
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(asset.body.as_bytes()));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if asset.name == "index.html" {
        // The page talks to its own origin only and is never framed.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

/// 64-bit FNV-1a: a stable ETag for a file that only changes with the binary.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_referenced_by_the_page_is_served() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        for name in ["app.js", "style.css", "favicon.svg"] {
            assert!(INDEX.body.contains(&format!("/ui/{name}")), "index.html links /ui/{name}");
            assert!(ASSETS.iter().any(|a| a.name == name));
        }
        assert!(ASSETS.iter().find(|a| a.name == "app.js").unwrap().body.contains("./lib.js"));
    }
}
