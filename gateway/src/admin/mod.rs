//! The admin listener (loopback by default, never the public port):
//! `/healthz`, `/metrics` (Prometheus text), `/admin/status` (JSON), and the
//! operations `thaw ctl` drives: `POST /admin/reload`,
//! `POST /admin/models/{m}/scale`, `POST /admin/models/{m}/drain`. With a
//! token configured, every request must carry `Authorization: Bearer
//! <token>` (401 otherwise). Errors are `{"error": "..."}`.

mod status;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::config::Secret;
use crate::metrics::Metrics;
use crate::models::{Models, OpError};
use crate::reload::{Outcome, Reloader, Trigger};

/// The admin app.
pub struct Admin {
    /// The models.
    pub models: Arc<Models>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The reload path.
    pub reloader: Arc<Reloader>,
    /// The bearer token every request must carry, when set.
    pub token: Option<Secret>,
}

type Response = http::Response<Vec<u8>>;

/// Largest admin request body (a scale request is a few bytes).
const MAX_BODY: usize = 64 * 1024;

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    let mut r = http::Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    let len = r.body().len();
    r.headers_mut().insert("content-length", len.into());
    // How `thaw ctl` tells the admin API from anything else at the address
    // (the public listener answers unknown paths with 404s of its own).
    r.headers_mut()
        .insert(API_HEADER, http::HeaderValue::from_static("admin"));
    r
}

/// The header every admin response carries, with the value `admin`.
pub const API_HEADER: &str = "thaw-api";

fn json_response(status: u16, body: &Value) -> Response {
    response(status, "application/json", body.to_string().into_bytes())
}

fn error(status: u16, message: impl std::fmt::Display) -> Response {
    json_response(status, &json!({"error": message.to_string()}))
}

/// Compares in time that depends only on the lengths, so the token cannot
/// be guessed byte by byte from response times.
fn same_secret(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// What an admin request asks for: a pure function of method and path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Metrics,
    Status,
    Reload,
    Scale(&'a str),
    Drain(&'a str),
    /// With the methods the path takes (the `Allow` header).
    MethodNotAllowed(&'static str),
    NotFound,
}

fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    let (want, route) = match path {
        "/healthz" => ("GET", Route::Health),
        "/metrics" => ("GET", Route::Metrics),
        "/admin/status" => ("GET", Route::Status),
        "/admin/reload" => ("POST", Route::Reload),
        _ => match path
            .strip_prefix("/admin/models/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((m, "scale")) if !m.is_empty() => ("POST", Route::Scale(m)),
            Some((m, "drain")) if !m.is_empty() => ("POST", Route::Drain(m)),
            _ => return Route::NotFound,
        },
    };
    if method == want || (want == "GET" && method == "HEAD") {
        route
    } else if want == "GET" {
        Route::MethodNotAllowed("GET, HEAD")
    } else {
        Route::MethodNotAllowed("POST")
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response {
        if let Some(denied) = self.authorize(session) {
            return denied;
        }
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        match route(&method, &path) {
            Route::Health => response(200, "text/plain", b"ok\n".to_vec()),
            Route::Metrics => {
                self.refresh_gauges();
                response(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            Route::Status => json_response(200, &self.status()),
            Route::Reload => self.reload().await,
            Route::Scale(model) => match read_json(session).await {
                Ok(body) => self.scale(model, &body),
                Err(e) => error(400, e),
            },
            Route::Drain(model) => match self.models.drain(model) {
                Ok(()) => json_response(200, &json!({"model": model, "override": "drained"})),
                Err(e) => op_error(&e),
            },
            Route::MethodNotAllowed(allow) => {
                let mut r = error(405, format!("{method} is not allowed on {path}"));
                r.headers_mut()
                    .insert("allow", http::HeaderValue::from_static(allow));
                r
            }
            Route::NotFound => error(404, format!("no route for {method} {path}")),
        }
    }
}

impl Admin {
    /// `None` when the request may proceed; else the 401 to send.
    fn authorize(&self, session: &ServerSession) -> Option<Response> {
        let want = self.token.as_ref()?;
        let given = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if given.is_some_and(|g| same_secret(g.as_bytes(), want.0.as_bytes())) {
            return None;
        }
        let mut r = error(
            401,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        r.headers_mut()
            .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
        Some(r)
    }

    /// Runs the reload on the control runtime (where models live) and
    /// reports it: 200 applied (or unchanged), 422 refused, 500 failed.
    async fn reload(&self) -> Response {
        let reloader = self.reloader.clone();
        let run = self
            .models
            .handle()
            .spawn(async move { reloader.reload(Trigger::Admin).await });
        let report = match run.await {
            Ok(report) => report,
            Err(e) => return error(500, format!("the reload did not finish: {e}")),
        };
        let status = match report.result {
            Outcome::Ok | Outcome::Unchanged => 200,
            Outcome::Refused => 422,
            Outcome::Failed => 500,
        };
        json_response(
            status,
            &serde_json::to_value(&report).unwrap_or(Value::Null),
        )
    }

    /// `{"min_instances": N, "max_instances": M}` (`max_instances` optional).
    fn scale(&self, model: &str, body: &Value) -> Response {
        let field = |name: &str| -> Result<Option<u32>, String> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| format!("{name} must be a whole number")),
            }
        };
        let (min, max) = match (field("min_instances"), field("max_instances")) {
            (Ok(Some(min)), Ok(max)) => (min, max),
            (Ok(None), Ok(_)) => return error(400, "min_instances is required"),
            (Err(e), _) | (_, Err(e)) => return error(400, e),
        };
        match self.models.scale(model, min, max) {
            Ok(set) => json_response(200, &json!({"model": model, "override": set})),
            Err(e) => op_error(&e),
        }
    }
}

fn op_error(e: &OpError) -> Response {
    match e {
        OpError::UnknownModel(_) => error(404, e),
        OpError::Invalid(_) => error(400, e),
    }
}

/// The request body as a JSON object (empty → `{}`).
async fn read_json(session: &mut ServerSession) -> Result<Value, String> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(format!("the body exceeds {MAX_BODY} bytes"));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err("the body must be a JSON object".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases = [
            ("GET", "/healthz", Route::Health),
            ("HEAD", "/metrics", Route::Metrics),
            ("GET", "/admin/status", Route::Status),
            ("POST", "/admin/reload", Route::Reload),
            ("GET", "/admin/reload", Route::MethodNotAllowed("POST")),
            ("POST", "/admin/models/minilm/scale", Route::Scale("minilm")),
            ("POST", "/admin/models/minilm/drain", Route::Drain("minilm")),
            (
                "GET",
                "/admin/models/minilm/drain",
                Route::MethodNotAllowed("POST"),
            ),
            ("POST", "/metrics", Route::MethodNotAllowed("GET, HEAD")),
            ("POST", "/admin/models//drain", Route::NotFound),
            ("POST", "/admin/models/minilm/other", Route::NotFound),
            ("GET", "/", Route::NotFound),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
