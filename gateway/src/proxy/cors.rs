//! CORS, for browser clients of the public API (off unless
//! `gateway.cors_allow_origins` names origins, as TGI's and TEI's
//! `--cors-allow-origin`). A preflight from an allowed origin is answered
//! here; the answers to its requests, the gateway's own and the workers',
//! carry the headers a browser needs to read them. The decision is made
//! once per request and kept in its header's extensions, where every
//! writer of a response finds it.

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// The origins that may call the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// `"*"`: any origin.
    any: bool,
    /// Exact origins, lower-cased (`https://app.example.com`).
    listed: Vec<String>,
}

impl Origins {
    /// The config's list: `"*"` alone, or origins (`scheme://host[:port]`,
    /// no path).
    pub fn parse(list: &[String]) -> Result<Origins, String> {
        if list.iter().any(|o| o == "*") {
            if list.len() > 1 {
                return Err("\"*\" allows every origin: list it alone".into());
            }
            return Ok(Origins {
                any: true,
                listed: Vec::new(),
            });
        }
        let listed = list
            .iter()
            .map(|o| {
                let rest = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"))
                    .ok_or_else(|| format!("{o:?} is not an origin (http:// or https://)"))?;
                if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
                    return Err(format!(
                        "{o:?} is not an origin: scheme://host[:port], no path"
                    ));
                }
                Ok(o.to_ascii_lowercase())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Origins { any: false, listed })
    }

    /// Whether CORS is on.
    pub fn enabled(&self) -> bool {
        self.any || !self.listed.is_empty()
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if
    /// it is allowed.
    fn allow(&self, origin: &[u8]) -> Option<Allowed> {
        if self.any {
            return Some(Allowed(HeaderValue::from_static("*")));
        }
        let origin = std::str::from_utf8(origin).ok()?.to_ascii_lowercase();
        self.listed
            .contains(&origin)
            .then(|| HeaderValue::from_str(&origin).ok().map(Allowed))
            .flatten()
    }
}

/// A request's allowed origin (the value of `Access-Control-Allow-Origin`
/// in its answer), kept in the request's extensions.
#[derive(Debug, Clone)]
struct Allowed(HeaderValue);

/// Response headers a browser script may read.
const EXPOSED: &str = "x-request-id, x-thaw-worker, x-thaw-cold-start-ms, retry-after, \
                       inference-header-content-length";

/// What a request is, for CORS.
pub enum Cors {
    /// Not a cross-origin request, or CORS is off, or its origin is not
    /// allowed: answered without CORS headers (a browser then refuses to
    /// hand the answer to the script).
    None,
    /// A preflight from an allowed origin: answer it with these headers
    /// and 204.
    Preflight(Box<ResponseHeader>),
    /// A request from an allowed origin: noted for its answer.
    Allowed,
}

/// Decides CORS for `request` under `origins`, noting an allowed origin in
/// the request for its answer.
pub fn decide(origins: &Origins, request: &mut RequestHeader) -> Result<Cors> {
    if !origins.enabled() {
        return Ok(Cors::None);
    }
    let Some(allowed) = request
        .headers
        .get("origin")
        .and_then(|o| origins.allow(o.as_bytes()))
    else {
        return Ok(Cors::None);
    };
    let preflight = request.method == http::Method::OPTIONS
        && request
            .headers
            .contains_key("access-control-request-method");
    if !preflight {
        request.extensions_mut().insert(allowed);
        return Ok(Cors::Allowed);
    }
    let mut header = ResponseHeader::build(204, Some(6))?;
    header.insert_header("access-control-allow-origin", allowed.0.clone())?;
    header.insert_header("access-control-allow-methods", "GET, HEAD, POST")?;
    let asked = request
        .headers
        .get("access-control-request-headers")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
    header.insert_header("access-control-allow-headers", asked)?;
    header.insert_header("access-control-max-age", "600")?;
    header.insert_header("vary", "Origin, Access-Control-Request-Headers")?;
    header.insert_header("content-length", "0")?;
    Ok(Cors::Preflight(Box::new(header)))
}

/// Adds the CORS headers to the answer of a request from an allowed origin.
pub fn expose(request: &RequestHeader, response: &mut ResponseHeader) -> Result<()> {
    if let Some(Allowed(origin)) = request.extensions.get::<Allowed>() {
        let any = origin.as_bytes() == b"*";
        response.insert_header("access-control-allow-origin", origin.clone())?;
        response.insert_header("access-control-expose-headers", EXPOSED)?;
        if !any {
            response.append_header("vary", "Origin")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/v1/embeddings", None).expect("request");
        for (name, value) in headers {
            r.insert_header(name.to_string(), *value).expect("header");
        }
        r
    }

    #[test]
    fn origins_parse() {
        assert!(!Origins::parse(&[]).expect("empty").enabled());
        assert!(Origins::parse(&["*".into()]).expect("any").enabled());
        for bad in [
            vec!["*".to_string(), "https://a.example".to_string()],
            vec!["a.example".to_string()],
            vec!["https://a.example/".to_string()],
            vec!["https://".to_string()],
            vec!["ftp://a.example".to_string()],
        ] {
            assert!(Origins::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allowed_origins_only() {
        let listed = Origins::parse(&["https://App.example:8443".into()]).expect("origins");
        let mut from = request("POST", &[("origin", "https://app.example:8443")]);
        assert!(matches!(decide(&listed, &mut from), Ok(Cors::Allowed)));
        let mut answer = ResponseHeader::build(200, None).expect("response");
        expose(&from, &mut answer).expect("headers");
        assert_eq!(
            answer.headers["access-control-allow-origin"],
            "https://app.example:8443"
        );
        assert_eq!(answer.headers["vary"], "Origin");
        assert!(answer.headers["access-control-expose-headers"]
            .to_str()
            .is_ok_and(|h| h.contains("x-request-id")));

        for other in [
            request("POST", &[("origin", "https://evil.example")]),
            request("POST", &[]),
        ] {
            let mut other = other;
            assert!(matches!(decide(&listed, &mut other), Ok(Cors::None)));
            let mut answer = ResponseHeader::build(200, None).expect("response");
            expose(&other, &mut answer).expect("headers");
            assert!(answer.headers.get("access-control-allow-origin").is_none());
        }
        let off = Origins::default();
        let mut from = request("POST", &[("origin", "https://app.example:8443")]);
        assert!(matches!(decide(&off, &mut from), Ok(Cors::None)));
    }

    #[test]
    fn a_preflight_is_answered_with_what_it_asked() {
        let any = Origins::parse(&["*".into()]).expect("origins");
        let mut preflight = request(
            "OPTIONS",
            &[
                ("origin", "http://localhost:3000"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
        );
        let Ok(Cors::Preflight(answer)) = decide(&any, &mut preflight) else {
            panic!("not a preflight");
        };
        assert_eq!(answer.status, 204);
        assert_eq!(answer.headers["access-control-allow-origin"], "*");
        assert_eq!(
            answer.headers["access-control-allow-headers"],
            "authorization, content-type"
        );
        assert!(answer.headers["access-control-allow-methods"]
            .to_str()
            .is_ok_and(|m| m.contains("POST")));
        // OPTIONS without the preflight's header is an ordinary request.
        let mut plain = request("OPTIONS", &[("origin", "http://localhost:3000")]);
        assert!(matches!(decide(&any, &mut plain), Ok(Cors::Allowed)));
    }
}
