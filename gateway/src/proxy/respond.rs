//! Responses the gateway writes itself — errors in the shape of the API the
//! request came through, listings — mapped from one error type in one place.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::admission::Rejection;

/// An error the gateway answers itself.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// Malformed request (400).
    BadRequest(String),
    /// The model's kind does not serve this route (400).
    WrongKind(String),
    /// Body over the limit (413).
    TooLarge(u64),
    /// A compressed body on a route that takes none (415), its encoding.
    UnsupportedEncoding(String),
    /// No such model (404).
    UnknownModel(String),
    /// No such route (404).
    NotFound(String),
    /// The model has no such version (404).
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
    },
    /// Wrong method (405), with the methods the path takes.
    MethodNotAllowed(&'static str),
    /// The client stopped sending its body (408).
    RequestTimeout(String),
    /// Shed: queue full or the wait would miss the deadline (429).
    Shed {
        /// Why.
        reason: &'static str,
        /// When to retry.
        retry_after: Duration,
    },
    /// Waited in the queue past the deadline (504).
    QueueTimeout,
    /// No capacity can be had (503).
    Unavailable {
        /// Why.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The worker failed mid-request (502).
    BadGateway(String),
    /// The worker sent nothing of the response for the model's
    /// `response_timeout` (504).
    WorkerTimeout(Duration),
}

impl From<Rejection> for GatewayError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::QueueFull { retry_after } | Rejection::WouldMissDeadline { retry_after } => {
                GatewayError::Shed {
                    reason: r.reason(),
                    retry_after,
                }
            }
            Rejection::Timeout => GatewayError::QueueTimeout,
            Rejection::Closed => GatewayError::Unavailable {
                message: "the model admits no requests now".into(),
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) | GatewayError::WrongKind(_) => 400,
            GatewayError::TooLarge(_) => 413,
            GatewayError::UnsupportedEncoding(_) => 415,
            GatewayError::UnknownModel(_)
            | GatewayError::NotFound(_)
            | GatewayError::UnknownVersion { .. } => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::RequestTimeout(_) => 408,
            GatewayError::Shed { .. } => 429,
            GatewayError::QueueTimeout | GatewayError::WorkerTimeout(_) => 504,
            GatewayError::Unavailable { .. } => 503,
            GatewayError::BadGateway(_) => 502,
        }
    }

    /// The HTTP status in the API's own terms (`openai`: OpenAI's shape).
    /// A model that does not serve an OpenAI endpoint is OpenAI's 404 (and
    /// vLLM's); KServe's `infer` on a chat model stays a bad request.
    pub fn status_for(&self, openai: bool) -> u16 {
        match self {
            GatewayError::WrongKind(_) if openai => 404,
            _ => self.status(),
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayError::BadRequest(m)
            | GatewayError::WrongKind(m)
            | GatewayError::BadGateway(m)
            | GatewayError::RequestTimeout(m) => m.clone(),
            GatewayError::TooLarge(n) => format!("request body is larger than {n} bytes"),
            GatewayError::UnsupportedEncoding(e) => format!(
                "Content-Encoding {e:?} is not supported on this route: send the body \
                 uncompressed"
            ),
            GatewayError::UnknownModel(m) => format!("model {m:?} does not exist"),
            GatewayError::NotFound(p) => match triton_extension(p) {
                Some(extension) => format!(
                    "no route for {p}: Triton's {extension} extension is not served here \
                     (thaw serves the KServe v2 protocol and its binary tensor data extension)"
                ),
                None => format!("no route for {p}"),
            },
            GatewayError::UnknownVersion { model, version } => format!(
                "model {model:?} has no version {version:?} (its one version is {:?})",
                super::route::MODEL_VERSION
            ),
            GatewayError::MethodNotAllowed(allow) => {
                format!("method not allowed on this path (allowed: {allow})")
            }
            GatewayError::Shed {
                reason,
                retry_after,
            } => format!(
                "overloaded ({reason}); retry after {}s",
                retry_after.as_secs()
            ),
            GatewayError::QueueTimeout => {
                "the request waited in the queue past its deadline".into()
            }
            GatewayError::WorkerTimeout(t) => format!(
                "the worker sent no response for {:.1}s (the model's queue.response_timeout)",
                t.as_secs_f64()
            ),
            GatewayError::Unavailable { message, .. } => message.clone(),
        }
    }

    /// Retry-After in whole seconds, at least 1, where the status has one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::Shed { retry_after, .. }
            | GatewayError::Unavailable { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }

    fn openai_type_code(&self) -> (&'static str, &'static str) {
        match self {
            GatewayError::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            GatewayError::WrongKind(_) => ("invalid_request_error", "unsupported_model_kind"),
            GatewayError::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            GatewayError::UnsupportedEncoding(_) => {
                ("invalid_request_error", "unsupported_content_encoding")
            }
            GatewayError::UnknownModel(_) => ("invalid_request_error", "model_not_found"),
            GatewayError::NotFound(_) | GatewayError::UnknownVersion { .. } => {
                ("invalid_request_error", "not_found")
            }
            GatewayError::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            GatewayError::RequestTimeout(_) => ("invalid_request_error", "request_timeout"),
            GatewayError::Shed { .. } => ("rate_limit_error", "overloaded"),
            GatewayError::QueueTimeout => ("server_error", "queue_timeout"),
            GatewayError::Unavailable { .. } => ("server_error", "unavailable"),
            GatewayError::BadGateway(_) => ("server_error", "worker_failed"),
            GatewayError::WorkerTimeout(_) => ("server_error", "worker_timeout"),
        }
    }

    /// The body in OpenAI's shape (`openai`) or KServe v2's.
    pub fn body(&self, openai: bool) -> Value {
        if openai {
            let (kind, code) = self.openai_type_code();
            // The one field the gateway reads is the model's.
            let param = match self {
                GatewayError::BadRequest(m) if m.contains("'model'") => Some("model"),
                _ => None,
            };
            json!({"error": {"message": self.message(), "type": kind, "param": param, "code": code}})
        } else {
            json!({"error": self.message()})
        }
    }
}

/// The Triton extension a `/v2` path belongs to, for a 404 that says why
/// a Triton client's call is not served (`get_model_config`, statistics,
/// the repository API…).
pub(super) fn triton_extension(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v2/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let extension = match parts.as_slice() {
        ["repository", ..] => "model repository",
        ["systemsharedmemory" | "cudasharedmemory", ..] => "shared memory",
        ["trace", ..] => "trace",
        ["logging"] => "logging",
        ["models", "stats"] => "statistics",
        ["models", _, tail @ ..] => match tail {
            ["config"] | ["versions", _, "config"] => "model configuration",
            ["stats"] | ["versions", _, "stats"] => "statistics",
            ["trace", ..] => "trace",
            ["generate" | "generate_stream"] | ["versions", _, "generate" | "generate_stream"] => {
                "generate"
            }
            _ => return None,
        },
        _ => return None,
    };
    Some(extension)
}

/// Writes a complete JSON response.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: &Value,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let bytes = Bytes::from(body.to_string());
    let mut header = ResponseHeader::build(status, Some(8 + extra.len()))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", bytes.len().to_string())?;
    for (name, value) in extra {
        header.insert_header(*name, value.as_str())?;
    }
    if let Some(id) = session.req_header().headers.get(super::REQUEST_ID) {
        header.insert_header(super::REQUEST_ID, id.clone())?;
    }
    super::cors::expose(session.req_header(), &mut header)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(bytes), true).await
}

/// Writes `error` in the request's API shape.
pub async fn error(session: &mut Session, error: &GatewayError, openai: bool) -> Result<()> {
    let mut extra = vec![("x-thaw-worker", "gateway".to_string())];
    if let Some(secs) = error.retry_after() {
        extra.push(("retry-after", secs.to_string()));
    }
    if let GatewayError::MethodNotAllowed(allow) = error {
        extra.push(("allow", allow.to_string()));
    }
    json(
        session,
        error.status_for(openai),
        &error.body(openai),
        &extra,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_map_to_statuses_with_retry_after() {
        let shed = GatewayError::from(Rejection::QueueFull {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!((shed.status(), shed.retry_after()), (429, Some(2)));
        let soon = GatewayError::from(Rejection::WouldMissDeadline {
            retry_after: Duration::from_millis(10),
        });
        assert_eq!(soon.retry_after(), Some(1), "never less than one second");
        assert_eq!(GatewayError::from(Rejection::Timeout).status(), 504);
        assert_eq!(GatewayError::from(Rejection::Closed).status(), 503);
    }

    #[test]
    fn triton_extensions_are_named_in_their_404() {
        for (path, extension) in [
            ("/v2/models/m/config", Some("model configuration")),
            (
                "/v2/models/m/versions/1/config",
                Some("model configuration"),
            ),
            ("/v2/models/stats", Some("statistics")),
            ("/v2/models/m/stats", Some("statistics")),
            ("/v2/repository/index", Some("model repository")),
            ("/v2/systemsharedmemory/status", Some("shared memory")),
            ("/v2/models/m/generate", Some("generate")),
            ("/v2/nothing", None),
            ("/v2/models/m/other", None),
            ("/v1/models/config", None),
        ] {
            assert_eq!(triton_extension(path), extension, "{path}");
        }
        let e = GatewayError::NotFound("/v2/models/m/config".into());
        assert!(e.message().contains("model configuration extension"));
    }

    #[test]
    fn shapes() {
        let e = GatewayError::UnknownModel("x".into());
        assert_eq!(e.body(true)["error"]["code"], "model_not_found");
        assert_eq!(e.body(true)["error"]["param"], Value::Null);
        assert!(e.body(true)["error"].get("param").is_some());
        assert!(e.body(false)["error"].is_string());
        let e = GatewayError::BadRequest("missing required parameter: 'model'".into());
        assert_eq!(e.body(true)["error"]["param"], "model");
    }
}
