//! Every error that reaches a client is mapped here, once, to a status and to
//! the error shape of the API it came through: OpenAI's
//! `{"error":{"message","type","code"}}` on `/v1`, KServe v2's `{"error":"…"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::models::ModelError;

/// What went wrong, independent of the API's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed or its values are out of range.
    BadRequest(String),
    /// The body is over the limit (bytes allowed).
    TooLarge(usize),
    /// A compressed body decodes to more than the limit (bytes allowed).
    DecodesTooLarge(usize),
    /// The body's `Content-Encoding` is not one this route decodes (415).
    UnsupportedEncoding(String),
    /// No such model on this worker.
    UnknownModel(String),
    /// No such route.
    NotFound(String),
    /// The model has no such version (KServe's `/versions/{v}`).
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
    },
    /// The prompt, or the prompt and `max_tokens` together, do not fit
    /// the model's context.
    ContextLength(String),
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The model can't serve this kind of request (e.g. embeddings from a scorer).
    WrongKind(String),
    /// Not ready yet (loading) or shutting down.
    Unavailable(String),
    /// A failure of ours.
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::WrongKind(_) | ApiError::ContextLength(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge(_) | ApiError::DecodesTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UnknownModel(_) | ApiError::NotFound(_) | ApiError::UnknownVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::ContextLength(m)
            | ApiError::WrongKind(m)
            | ApiError::UnsupportedEncoding(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::TooLarge(limit) => format!("request body is larger than {limit} bytes"),
            ApiError::DecodesTooLarge(limit) => {
                format!("the compressed request body decodes to more than {limit} bytes")
            }
            ApiError::UnknownModel(m) => format!("model {m:?} does not exist"),
            ApiError::NotFound(path) => format!("no route for {path}"),
            ApiError::UnknownVersion { model, version } => format!(
                "model {model:?} has no version {version:?} (its one version is {:?})",
                super::kserve::MODEL_VERSION
            ),
            ApiError::MethodNotAllowed => "method not allowed on this path".to_string(),
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn openai_type_code(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            ApiError::ContextLength(_) => ("invalid_request_error", "context_length_exceeded"),
            ApiError::WrongKind(_) => ("invalid_request_error", "unsupported_model_kind"),
            ApiError::TooLarge(_) | ApiError::DecodesTooLarge(_) => {
                ("invalid_request_error", "request_too_large")
            }
            ApiError::UnsupportedEncoding(_) => {
                ("invalid_request_error", "unsupported_content_encoding")
            }
            ApiError::UnknownModel(_) => ("invalid_request_error", "model_not_found"),
            ApiError::NotFound(_) | ApiError::UnknownVersion { .. } => {
                ("invalid_request_error", "not_found")
            }
            ApiError::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            ApiError::Unavailable(_) => ("server_error", "unavailable"),
            ApiError::Internal(_) => ("server_error", "internal_error"),
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Stopped => ApiError::Unavailable(e.to_string()),
            ModelError::Load(_) | ModelError::Inference(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

/// An error in KServe v2's shape.
#[derive(Debug)]
pub struct V2Error(pub ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        OpenAiError(e.into())
    }
}

impl<E: Into<ApiError>> From<E> for V2Error {
    fn from(e: E) -> Self {
        V2Error(e.into())
    }
}

impl OpenAiError {
    /// The error's JSON body (also sent as an event in a failed stream).
    pub fn body(&self) -> serde_json::Value {
        let (kind, code) = self.0.openai_type_code();
        let message = self.0.message();
        let param = match self.0 {
            ApiError::BadRequest(_) => param(&message),
            _ => None,
        };
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
    }
}

/// OpenAI's `param`: the field a message names first, as every message
/// about a field begins (`'temperature' is 3; …`, `missing required
/// parameter: 'model'`); `None` (JSON null) otherwise.
fn param(message: &str) -> Option<&str> {
    let field = message.split('\'').nth(1)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "_.[]".contains(c);
    (!field.is_empty() && field.chars().all(plain)).then_some(field)
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = self.body();
        // A model that does not serve the endpoint is OpenAI's 404 ("This
        // is a chat model and not supported in the v1/completions
        // endpoint"), and vLLM's.
        let status = match self.0 {
            ApiError::WrongKind(_) => StatusCode::NOT_FOUND,
            _ => self.0.status(),
        };
        (status, Json(body)).into_response()
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        (self.0.status(), Json(json!({"error": self.0.message()}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_param_is_the_field_a_message_names() {
        for (message, want) in [
            (
                "'temperature' is 3; it must be between 0 and 2",
                Some("temperature"),
            ),
            ("missing required parameter: 'messages'", Some("messages")),
            (
                "'messages[1].content' is missing",
                Some("messages[1].content"),
            ),
            (
                "'stream_options.include_usage' must be a boolean",
                Some("stream_options.include_usage"),
            ),
            // An apostrophe is no field.
            (
                "the prompt's 9 tokens leave 3 of this model's context",
                None,
            ),
            ("the prompt is empty", None),
        ] {
            assert_eq!(param(message), want, "{message}");
        }
        let body = OpenAiError(ApiError::BadRequest("'n' is 0; …".into())).body();
        assert_eq!(body["error"]["param"], "n");
        let body = OpenAiError(ApiError::Internal("'x' failed".into())).body();
        assert_eq!(body["error"]["param"], serde_json::Value::Null);
    }

    #[test]
    fn statuses() {
        assert_eq!(
            ApiError::TooLarge(10).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::UnknownModel("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(ModelError::Stopped).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(ModelError::Inference("boom".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
