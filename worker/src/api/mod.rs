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
    // The gateway's id for the request, so its log line and this one meet.
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        request_id,
        status = response.status().as_u16(),
        micros = start.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Reads a body under the size limit: 413 beyond it (by Content-Length up
/// front, or while reading a body without one). A compressed body is a 415:
/// OpenAI's clients send none (KServe's `infer` takes them:
/// [`read_encoded_body`]). A body refused for its headers is read all the
/// same: the connection then takes the client's next request, and a
/// gateway streaming the body is not cut off as if the worker had died.
pub async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let refused = compressed(request.headers());
    let body = read_raw_body(request, limit).await?;
    match refused {
        Some(encoding) => Err(ApiError::UnsupportedEncoding(format!(
            "Content-Encoding {encoding:?} is not supported on this route: send the body \
             uncompressed"
        ))),
        None => Ok(body),
    }
}

/// Like [`read_body`], and a body sent with `Content-Encoding: gzip` or
/// `deflate` (as Triton's clients can) is decoded; what it decodes to is
/// held to the same limit (a small body must not expand without bound),
/// or to the gateway's (`x-thaw-decoded-limit`) where that is less: the
/// workers a gateway starts have no limit of their own. Another encoding
/// is a 415.
pub async fn read_encoded_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    // Refused after the body is read, as in `read_body`.
    let encoding = Encoding::of(request.headers());
    let decoded_limit = request
        .headers()
        .get("x-thaw-decoded-limit")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(limit, |gateway| gateway.min(limit));
    let body = read_raw_body(request, limit).await?;
    encoding?.decode(body, decoded_limit)
}

/// The `Content-Encoding` of a body that is not sent as it is: the codings
/// of every such header line, in order, `identity` left out, joined by
/// `", "` (RFC 9110 §5.3: the lines are one list).
fn compressed(headers: &header::HeaderMap) -> Option<String> {
    let codings: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity")
                .collect::<Vec<_>>()
        })
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

async fn read_raw_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
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

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As it is (no header, or `identity`).
    Identity,
    /// `gzip` (one member or several).
    Gzip,
    /// `deflate`: zlib's format as HTTP means it, or the raw deflate
    /// stream that some clients send under that name.
    Deflate,
}

impl Encoding {
    /// The encoding a request's headers declare.
    pub fn of(headers: &header::HeaderMap) -> Result<Encoding, ApiError> {
        match compressed(headers).as_deref() {
            None => Ok(Encoding::Identity),
            Some("gzip" | "x-gzip") => Ok(Encoding::Gzip),
            Some("deflate") => Ok(Encoding::Deflate),
            Some(other) => Err(ApiError::UnsupportedEncoding(format!(
                "Content-Encoding {other:?} is not supported: send the body uncompressed, \
                 or compressed once with gzip or deflate"
            ))),
        }
    }

    /// The body decoded, at most `limit` bytes of it (413 beyond).
    pub fn decode(self, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
        use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
        use std::io::Read;
        let inflate = |reader: &mut dyn Read, name: &str| {
            let mut out = Vec::new();
            reader
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::BadRequest(format!("the request body is not valid {name} data: {e}"))
                })?;
            if out.len() > limit {
                return Err(ApiError::DecodesTooLarge(limit));
            }
            Ok(Bytes::from(out))
        };
        match self {
            Encoding::Identity => Ok(body),
            Encoding::Gzip => inflate(&mut MultiGzDecoder::new(&body[..]), "gzip"),
            Encoding::Deflate => {
                inflate(&mut ZlibDecoder::new(&body[..]), "deflate").or_else(|zlib| {
                    inflate(&mut DeflateDecoder::new(&body[..]), "deflate").map_err(|_| zlib)
                })
            }
        }
    }
}

/// Parses a JSON body into `T`, naming what was wrong: the JSON itself, or
/// a field of the request.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            return ApiError::BadRequest(format!("invalid request: {e}"));
        }
        let hint = if non_json_number_at(body, e.line(), e.column()) {
            " (NaN and Infinity are not JSON numbers)"
        } else {
            ""
        };
        ApiError::BadRequest(format!("invalid JSON body: {e}{hint}"))
    })
}

/// Whether a JSON syntax error at `line`:`column` (1-based, as serde_json
/// counts) is a `NaN` or `Infinity`, which Python's `json.dumps` writes.
fn non_json_number_at(body: &[u8], line: usize, column: usize) -> bool {
    let Some(text) = body.split(|&b| b == b'\n').nth(line.saturating_sub(1)) else {
        return false;
    };
    let at = column.saturating_sub(1).min(text.len());
    let start = text[..at]
        .iter()
        .rposition(|b| !b.is_ascii_alphanumeric() && *b != b'-')
        .map_or(0, |i| i + 1);
    let word: Vec<u8> = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-')
        .copied()
        .collect();
    matches!(&word[..], b"NaN" | b"-NaN" | b"Infinity" | b"-Infinity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_json_numbers_are_named() {
        for body in [
            &br#"{"data": [1, NaN, 2]}"#[..],
            br#"{"data": [Infinity]}"#,
            b"{\n \"data\": [1,\n -Infinity]}",
        ] {
            let e = parse_json::<serde_json::Value>(body).expect_err("not JSON");
            assert!(format!("{e:?}").contains("NaN and Infinity"), "{e:?}");
        }
        let e = parse_json::<serde_json::Value>(br#"{"data": [1, nope]}"#).expect_err("not JSON");
        assert!(!format!("{e:?}").contains("NaN"), "{e:?}");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_not_called_invalid_json() {
        #[derive(Debug, serde::Deserialize)]
        struct R {
            #[allow(dead_code)]
            n: u32,
        }
        let e = parse_json::<R>(br#"{"n": "x"}"#).expect_err("wrong type");
        assert!(
            format!("{e:?}").contains("invalid request: invalid type"),
            "{e:?}"
        );
    }

    #[test]
    fn bodies_decode_by_their_encoding() {
        use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
        use flate2::Compression;
        use std::io::Write;
        let text = b"{\"inputs\": []}".repeat(100);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&text).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(&text).expect("zlib");
        let zlib = zlib.finish().expect("zlib");
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(&text).expect("deflate");
        let raw = raw.finish().expect("deflate");
        for (encoding, body) in [
            (Encoding::Gzip, gz.clone()),
            (Encoding::Deflate, zlib),
            (Encoding::Deflate, raw),
            (Encoding::Identity, text.clone()),
        ] {
            let out = encoding
                .decode(Bytes::from(body), 1 << 20)
                .expect("decodes");
            assert_eq!(&out[..], &text[..], "{encoding:?}");
        }
        // What it decodes to is held to the limit.
        assert_eq!(
            Encoding::Gzip.decode(Bytes::from(gz), text.len() - 1),
            Err(ApiError::DecodesTooLarge(text.len() - 1))
        );
        let e = Encoding::Gzip
            .decode(Bytes::from_static(b"{\"not\": \"gzip\"}"), 1 << 20)
            .expect_err("not gzip");
        assert!(format!("{e:?}").contains("not valid gzip data"), "{e:?}");
        let mut headers = header::HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "br".parse().expect("value"));
        assert!(matches!(
            Encoding::of(&headers),
            Err(ApiError::UnsupportedEncoding(m)) if m.contains("\"br\"")
        ));
        headers.insert(header::CONTENT_ENCODING, " GZIP ".parse().expect("value"));
        assert_eq!(Encoding::of(&headers), Ok(Encoding::Gzip));
        // Every line counts, as one list; identity is no coding.
        headers.append(header::CONTENT_ENCODING, "identity".parse().expect("value"));
        assert_eq!(Encoding::of(&headers), Ok(Encoding::Gzip));
        headers.append(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
        assert!(Encoding::of(&headers).is_err(), "gzip twice");
        let mut one_line = header::HeaderMap::new();
        one_line.insert(
            header::CONTENT_ENCODING,
            "gzip, identity".parse().expect("value"),
        );
        assert_eq!(Encoding::of(&one_line), Ok(Encoding::Gzip));
    }
}
