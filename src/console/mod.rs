//! The web console: the single-page application in `console/` (plain ES modules and CSS, no
//! build step), embedded in the binary at compile time and served at `/`. Public routes: the
//! page itself under every path the application (and the links in our emails) open, and its
//! files under `/console/…`. The console calls the `/v1/…` API like any other client; unknown
//! `/v1/…` paths still answer the API's JSON 404.

use std::{collections::HashMap, sync::LazyLock};

use axum::{
    extract::Path,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use include_dir::{include_dir, Dir};

use crate::{
    error::Error,
    http::{
        openapi::{Describer, Op, Output},
        routes::Routes,
    },
};

static FILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/console");

/// The paths the application answers with its page: the sign-in pages the emails link to
/// (`/verify-email?email=&code=`, `/reset-password?token=`, `/accept-invitation?token=`) and the
/// signed-in pages (`/account`, `/orgs`, `/orgs/{org}/{page}`, a platform admin's `/admin/{page}`).
pub const PAGES: &[&str] = &[
    "/",
    "/login",
    "/register",
    "/verify-email",
    "/forgot-password",
    "/reset-password",
    "/accept-invitation",
    "/account",
    "/orgs",
    "/orgs/{*page}",
    "/admin",
    "/admin/{*page}",
];

/// Scripts and styles only from this origin (no inline script, no `eval`), API calls only to it,
/// never framed, and no `Referer` (the pages' URLs carry reset and invitation tokens).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// Whether `path` is the console's page or one of its files (what [`routes`] answers).
pub fn is_console_path(path: &str) -> bool {
    path.starts_with("/console/")
        || PAGES
            .iter()
            .any(|page| match page.strip_suffix("/{*page}") {
                Some(prefix) => path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
                None => path == *page,
            })
}

/// The API reference page (Redoc over `/openapi.json`): Redoc styles itself with inline
/// `<style>` elements and runs its search in a worker made from a `blob:` URL, so this one page
/// allows both; scripts still come only from this origin.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; \
                        connect-src 'self'; object-src 'none'; base-uri 'none'; \
                        form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Routes {
    PAGES
        .iter()
        .fold(Routes::new(), |r, path| r.get(path, page))
        .get("/console/{*path}", asset)
        .get("/docs", docs)
}

/// A file and its validator (a hash of its bytes: the same across nodes of one build).
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

static ASSETS: LazyLock<HashMap<String, Asset>> = LazyLock::new(|| {
    let mut all = HashMap::new();
    collect(&FILES, &mut all);
    all
});

fn collect(dir: &'static Dir<'static>, out: &mut HashMap<String, Asset>) {
    for file in dir.files() {
        let path = file.path().to_string_lossy().replace('\\', "/");
        let hash = crate::crypto::sha256_hex(file.contents());
        let etag = HeaderValue::from_str(&format!("\"{}\"", &hash[..20]))
            .expect("hex is a valid header value");
        out.insert(
            path.clone(),
            Asset {
                bytes: file.contents(),
                content_type: content_type(&path),
                etag,
            },
        );
    }
    for sub in dir.dirs() {
        collect(sub, out);
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The application's page, whatever its path (the application routes in the browser).
async fn page(headers: HeaderMap) -> Result<Page, Error> {
    serve("index.html", &headers).map(Page)
}

/// The API reference.
async fn docs(headers: HeaderMap) -> Result<Page, Error> {
    serve_with("docs.html", &headers, DOCS_CSP).map(Page)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Result<File, Error> {
    serve(&path, &headers).map(File)
}

/// An HTML page of the console (or `304 Not Modified`).
pub struct Page(Response);

/// A file of the console, of the type its extension names (or `304 Not Modified`).
pub struct File(Response);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        self.0
    }
}

impl IntoResponse for File {
    fn into_response(self) -> Response {
        self.0
    }
}

impl Output for Page {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success(
            "200",
            "The page",
            Some(("text/html", serde_json::json!({"type": "string"}))),
        );
        op.success("304", "Not modified (`If-None-Match`)", None);
    }
}

impl Output for File {
    fn describe(_d: &mut Describer, op: &mut Op) {
        op.success_in(
            "200",
            "The file (JavaScript, CSS, an image, a font…), of the type its extension names",
            &[("*/*", serde_json::json!({}))],
        );
        op.success("304", "Not modified (`If-None-Match`)", None);
    }
}

/// Answers a file with its type and validator; revalidated on every use (`no-cache`), so a new
/// build is picked up at once and an unchanged file costs a 304.
fn serve(path: &str, headers: &HeaderMap) -> Result<Response, Error> {
    serve_with(path, headers, CSP)
}

fn serve_with(path: &str, headers: &HeaderMap, csp: &'static str) -> Result<Response, Error> {
    let asset = ASSETS
        .get(path)
        .ok_or_else(|| Error::not_found("No such console file"))?;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag.as_bytes());
    let common = [
        (header::ETAG, asset.etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_paths_are_its_pages_and_files() {
        for yes in [
            "/",
            "/login",
            "/orgs",
            "/orgs/acme/keys",
            "/admin/users",
            "/console/app.css",
        ] {
            assert!(super::is_console_path(yes), "{yes}");
        }
        for no in [
            "/orgs/", "/v1/orgs", "/loginx", "/adminx", "/health", "/orgsx/a",
        ] {
            assert!(!super::is_console_path(no), "{no}");
        }
    }

    #[test]
    fn every_file_has_a_known_type() {
        for (path, asset) in super::ASSETS.iter() {
            if path.ends_with("LICENSE") {
                continue;
            }
            assert_ne!(asset.content_type, "application/octet-stream", "{path}");
        }
        assert!(super::ASSETS.contains_key("index.html"));
    }
}
