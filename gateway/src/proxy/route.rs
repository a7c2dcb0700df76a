//! Which model a request is for and how the gateway treats it: a pure
//! function of the method and path, tested with a table. OpenAI paths name
//! the model in the body; KServe v2 paths name it in the path (with or
//! without `/versions/{v}`); listing, metadata and health routes are
//! answered by the gateway itself without waking a model.

/// The one version of every model (KServe's `versions`, `model_version`).
pub const MODEL_VERSION: &str = "1";

/// What the gateway does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/...` proxied to the model named by the body's `model`.
    OpenAiBody,
    /// A `/v2/models/{m}/...` request proxied to model `m` (`infer`).
    V2Model(String),
    /// `GET /v1/models`: every configured model, answered here.
    OpenAiModels,
    /// `GET /v1/models/{m}`: one model, answered here.
    OpenAiModel(String),
    /// `GET /v2`: server metadata.
    V2Server,
    /// `GET /v2/health/live` or `/v2/health/ready`.
    V2Health,
    /// `GET /v2/models/{m}`: metadata of model `m`, answered here.
    V2ModelMetadata(String),
    /// `GET /v2/models/{m}/ready`.
    V2ModelReady(String),
    /// A `/v2/models/{m}/versions/{v}/...` path with a version the model
    /// does not have.
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
    },
    /// No such route; `openai` says which API's error shape to use.
    NotFound {
        /// Whether the path is under `/v1`.
        openai: bool,
    },
    /// The path exists but not with this method.
    MethodNotAllowed {
        /// Whether the path is under `/v1`.
        openai: bool,
        /// The methods it takes (the `Allow` header).
        allow: &'static str,
    },
}

/// The OpenAI POST endpoints the gateway proxies.
const OPENAI_POSTS: [&str; 3] = ["/v1/embeddings", "/v1/chat/completions", "/v1/completions"];

/// Routes a request by method and path (no query string).
pub fn route(method: &str, path: &str) -> Route {
    let openai = path == "/v1" || path.starts_with("/v1/");
    let method_guard = |wanted: &str, ok: Route| {
        if method == wanted || (wanted == "GET" && method == "HEAD") {
            ok
        } else {
            let allow = if wanted == "GET" { "GET, HEAD" } else { "POST" };
            Route::MethodNotAllowed { openai, allow }
        }
    };
    if OPENAI_POSTS.contains(&path) {
        return method_guard("POST", Route::OpenAiBody);
    }
    if path == "/v1/models" {
        return method_guard("GET", Route::OpenAiModels);
    }
    if let Some(model) = path.strip_prefix("/v1/models/") {
        if model.is_empty() || model.contains('/') {
            return Route::NotFound { openai };
        }
        return method_guard("GET", Route::OpenAiModel(model.to_string()));
    }
    if path == "/v2" {
        return method_guard("GET", Route::V2Server);
    }
    if path == "/v2/health/live" || path == "/v2/health/ready" {
        return method_guard("GET", Route::V2Health);
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let parts: Vec<&str> = rest.split('/').collect();
        let model = parts[0].to_string();
        if model.is_empty() {
            return Route::NotFound { openai };
        }
        let mut tail = &parts[1..];
        if let ["versions", version, rest @ ..] = tail {
            if version.is_empty() {
                return Route::NotFound { openai };
            }
            if *version != MODEL_VERSION {
                let version = version.to_string();
                return Route::UnknownVersion { model, version };
            }
            tail = rest;
        }
        return match tail {
            [] => method_guard("GET", Route::V2ModelMetadata(model)),
            ["ready"] => method_guard("GET", Route::V2ModelReady(model)),
            ["infer"] => method_guard("POST", Route::V2Model(model)),
            _ => Route::NotFound { openai },
        };
    }
    Route::NotFound { openai }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let m = |s: &str| s.to_string();
        let cases = [
            ("POST", "/v1/embeddings", Route::OpenAiBody),
            ("POST", "/v1/chat/completions", Route::OpenAiBody),
            ("POST", "/v1/completions", Route::OpenAiBody),
            (
                "GET",
                "/v1/embeddings",
                Route::MethodNotAllowed {
                    openai: true,
                    allow: "POST",
                },
            ),
            ("GET", "/v1/models", Route::OpenAiModels),
            ("HEAD", "/v1/models", Route::OpenAiModels),
            (
                "POST",
                "/v1/models",
                Route::MethodNotAllowed {
                    openai: true,
                    allow: "GET, HEAD",
                },
            ),
            ("GET", "/v1/nothing", Route::NotFound { openai: true }),
            ("GET", "/v1/models/minilm", Route::OpenAiModel(m("minilm"))),
            ("GET", "/v1/models/", Route::NotFound { openai: true }),
            ("GET", "/v1/models/a/b", Route::NotFound { openai: true }),
            (
                "DELETE",
                "/v1/models/minilm",
                Route::MethodNotAllowed {
                    openai: true,
                    allow: "GET, HEAD",
                },
            ),
            ("GET", "/v2", Route::V2Server),
            ("GET", "/v2/health/live", Route::V2Health),
            ("GET", "/v2/health/ready", Route::V2Health),
            (
                "GET",
                "/v2/models/minilm",
                Route::V2ModelMetadata(m("minilm")),
            ),
            (
                "GET",
                "/v2/models/minilm/ready",
                Route::V2ModelReady(m("minilm")),
            ),
            (
                "POST",
                "/v2/models/minilm/infer",
                Route::V2Model(m("minilm")),
            ),
            (
                "GET",
                "/v2/models/minilm/infer",
                Route::MethodNotAllowed {
                    openai: false,
                    allow: "POST",
                },
            ),
            (
                "POST",
                "/v2/models/minilm/other",
                Route::NotFound { openai: false },
            ),
            ("GET", "/v2/models/", Route::NotFound { openai: false }),
            (
                "POST",
                "/v2/models/minilm/versions/1/infer",
                Route::V2Model(m("minilm")),
            ),
            (
                "GET",
                "/v2/models/minilm/versions/1",
                Route::V2ModelMetadata(m("minilm")),
            ),
            (
                "GET",
                "/v2/models/minilm/versions/1/ready",
                Route::V2ModelReady(m("minilm")),
            ),
            (
                "POST",
                "/v2/models/minilm/versions/2/infer",
                Route::UnknownVersion {
                    model: m("minilm"),
                    version: m("2"),
                },
            ),
            (
                "GET",
                "/v2/models/minilm/versions/",
                Route::NotFound { openai: false },
            ),
            (
                "GET",
                "/v2/models/minilm/versions",
                Route::NotFound { openai: false },
            ),
            (
                "POST",
                "/v2/models/minilm/versions/1/infer/more",
                Route::NotFound { openai: false },
            ),
            ("GET", "/", Route::NotFound { openai: false }),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(method, path), want, "{method} {path}");
        }
    }
}
