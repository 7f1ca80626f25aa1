//! `GET /`: the web console, one page embedded in the binary, with its
//! script and style sheet beside it under `/console/`.
//!
//! The page (`console.html`, `console.css`, `console.js`) loads nothing
//! else: no build step, no CDN, no fonts from elsewhere, so it works on a
//! node with no way out. Its script polls this node's JSON routes
//! (`/status/cluster`, `/status/history`, `/counters`, `/counter/<name>`
//! and, on demand, `/counter/<name>/consistent_value`) every 2 s and writes
//! what they say with `textContent` only; its charts are inline SVG that it
//! draws itself from `/status/history`, the node's own samples of the last
//! ten minutes, and `/status/cluster/history`, every node's.
//!
//! Every answer carries a Content-Security-Policy that allows the node's own
//! script and style sheet, same-origin fetches and nothing else: no inline
//! script or style, no other origin, frame, form target or plugin. The
//! assets are referred to by relative paths, so the console also works
//! behind a proxy that serves the node under a path prefix. Left out:
//! authentication (the routes the page reads are open, as they are to
//! `curl`), and charts of the other nodes (each keeps its own history; the
//! page shows the one of the node that served it).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The page, served as is.
pub const PAGE: &str = include_str!("console.html");
/// Its script, at `/console/console.js`.
pub const SCRIPT: &str = include_str!("console.js");
/// Its style sheet, at `/console/console.css`.
pub const STYLE: &str = include_str!("console.css");

/// Only the node's own script and style, same-origin fetches, nothing else.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub(super) async fn page() -> Response {
    serve("text/html; charset=utf-8", PAGE)
}

/// `GET /console/<asset>`.
pub(super) async fn asset(Path(asset): Path<String>) -> Result<Response, ApiError> {
    match asset.as_str() {
        "console.js" => Ok(serve("text/javascript; charset=utf-8", SCRIPT)),
        "console.css" => Ok(serve("text/css; charset=utf-8", STYLE)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no console asset {asset:?}; the console is at /"),
        )),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the policy cannot see: the page must not need anything it would
    /// block, nor load anything from elsewhere.
    #[test]
    fn the_page_is_self_contained() {
        assert_eq!(
            PAGE.matches("<script").count(),
            1,
            "one script, the node's own"
        );
        assert!(PAGE.contains(r#"<script src="console/console.js"></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="console/console.css">"#));
        assert!(!PAGE.contains("<style"), "no inline style");
        for (file, text) in [("page", PAGE), ("script", SCRIPT), ("style", STYLE)] {
            let lower = text.to_ascii_lowercase();
            for banned in [
                "innerhtml",
                "outerhtml",
                "insertadjacenthtml",
                "document.write",
                "eval(",
                "new function",
                " style=\"",
                " onclick=",
                " onload=",
                " onsubmit=",
                "http://",
                "https://",
                "@import",
                "url(",
            ] {
                assert!(!lower.contains(banned), "the {file} contains {banned:?}");
            }
        }
        assert!(!POLICY.contains("unsafe"), "{POLICY}");
    }
}
