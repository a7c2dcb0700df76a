//! The worker's HTTP API: OpenAI (`/v1`) and KServe v2 (`/v2`) for its one
//! model. Handlers validate and tokenize, then hand the work to the batching
//! executor; they never run model code on the runtime's threads.

pub mod chat;
pub mod error;
pub mod kserve;
pub mod openai;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use serde::de::DeserializeOwned;
use thaw_snapshot::ModelKind;
use tokenizers::Tokenizer;

pub use error::{ApiError, OpenAiError, V2Error};

use crate::batcher::Batcher;
use crate::models::chat::{ChatModel, Engine};
use crate::models::tabular::TabularManifest;
use crate::models::{EmbeddingModel, TabularModel};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Most inputs (texts or rows) in one request.
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_inputs: 2048,
        }
    }
}

/// The model behind the API, once loaded.
pub enum Backend {
    /// An embedding model: requests are tokenized here, encoded in batches.
    Embedding {
        /// The executor.
        batcher: Batcher<EmbeddingModel>,
        /// A copy of the model's tokenizer (truncation set).
        tokenizer: Arc<Tokenizer>,
        /// Vector length.
        dimensions: usize,
    },
    /// A tabular scorer.
    Tabular {
        /// The executor.
        batcher: Batcher<TabularModel>,
        /// Input and output names, feature count.
        manifest: TabularManifest,
    },
    /// A chat model.
    Chat {
        /// The generation thread.
        engine: Engine,
        /// The model (its tokenizer and template are used here).
        model: Arc<ChatModel>,
    },
}

/// Shared state of the API.
pub struct AppState {
    /// The name clients use for the model.
    pub name: String,
    /// Its kind.
    pub kind: ModelKind,
    /// Set once the model is loaded and warmed; until then `ready` is false.
    pub backend: OnceLock<Backend>,
    ready: AtomicBool,
    /// Request limits.
    pub limits: Limits,
    /// Seconds since the epoch when the worker started (OpenAI's `created`).
    pub created: u64,
}

impl AppState {
    /// State for a model that is still loading.
    pub fn new(name: String, kind: ModelKind, limits: Limits) -> Arc<Self> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Arc::new(AppState {
            name,
            kind,
            backend: OnceLock::new(),
            ready: AtomicBool::new(false),
            limits,
            created,
        })
    }

    /// Installs the loaded model and marks the worker ready.
    pub fn set_ready(&self, backend: Backend) {
        if self.backend.set(backend).is_ok() {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Whether the model is loaded and warmed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The backend, or 503 while loading.
    pub fn backend(&self) -> Result<&Backend, ApiError> {
        self.backend
            .get()
            .ok_or_else(|| ApiError::Unavailable(format!("model {:?} is loading", self.name)))
    }

    /// 404 unless `model` names this worker's model.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.name {
            Ok(())
        } else {
            Err(ApiError::UnknownModel(model.to_string()))
        }
    }
}

/// The router of the whole API.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(openai::routes())
        .merge(chat::routes())
        .merge(kserve::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found(uri: Uri) -> Response {
    let err = ApiError::NotFound(uri.path().to_string());
    in_shape_of(&uri, err)
}

async fn method_not_allowed(uri: Uri) -> Response {
    in_shape_of(&uri, ApiError::MethodNotAllowed)
}

fn in_shape_of(uri: &Uri, err: ApiError) -> Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/v1") {
        OpenAiError(err).into_response()
    } else {
        V2Error(err).into_response()
    }
}

/// One line per request at info, with its latency.
async fn log_request(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        micros = start.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Reads a body under the size limit: 413 beyond it (by Content-Length up
/// front, or while reading a body without one).
pub async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    let body: Body = request.into_body();
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_long = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_long {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("reading the request body: {e}"))
        }
    })
}

/// Parses a JSON body into `T`, naming what was wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
