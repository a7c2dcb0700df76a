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
            .map(|o| origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Origins { any: false, listed })
    }

    /// Whether CORS is on.
    pub fn enabled(&self) -> bool {
        self.any || !self.listed.is_empty()
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if
    /// it is allowed.
    fn allow(&self, origin: &[u8]) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = std::str::from_utf8(origin).ok()?.to_ascii_lowercase();
        self.listed
            .contains(&origin)
            .then(|| HeaderValue::from_str(&origin).ok())
            .flatten()
    }
}

/// An origin as a browser sends it: `scheme://host[:port]`, lower-cased,
/// without the scheme's default port (a browser leaves it out, so a listed
/// `https://a.example:443` would never match).
fn origin(o: &str) -> Result<String, String> {
    let lower = o.to_ascii_lowercase();
    let (scheme, rest, default_port) = if let Some(rest) = lower.strip_prefix("https://") {
        ("https", rest, "443")
    } else if let Some(rest) = lower.strip_prefix("http://") {
        ("http", rest, "80")
    } else {
        return Err(format!("{o:?} is not an origin (http:// or https://)"));
    };
    // An IPv6 host is bracketed, its colons inside the brackets.
    let split = match rest.find(']') {
        Some(end) if rest.starts_with('[') => match &rest[end + 1..] {
            "" => Some((&rest[..=end], None)),
            after => after.strip_prefix(':').map(|p| (&rest[..=end], Some(p))),
        },
        _ => Some(match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }),
    };
    let Some((host, port)) = split else {
        return Err(format!(
            "{o:?} is not an origin: scheme://host[:port], no path"
        ));
    };
    let bad_host = host.is_empty() || host.contains(['/', '?', '#', ' ', '@']);
    let bad_port = port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|n| n > 0));
    if bad_host || bad_port {
        return Err(format!(
            "{o:?} is not an origin: scheme://host[:port], no path"
        ));
    }
    Ok(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// What the answer to a request needs for CORS, kept in the request's
/// extensions: the `Access-Control-Allow-Origin` of an allowed origin, and
/// whether the answer depends on the origin (`Vary: Origin`, on every
/// answer while specific origins are listed, so that a cache does not hand
/// one origin's answer to another).
#[derive(Debug, Clone)]
struct Noted {
    allow: Option<HeaderValue>,
    vary: bool,
}

/// Response headers a browser script may read.
const EXPOSED: &str = "x-request-id, x-thaw-worker, x-thaw-cold-start-ms, retry-after, \
                       inference-header-content-length";

/// Decides CORS for `request` under `origins`: the answer to a preflight
/// from an allowed origin (204 with what it asked), to be sent as it is;
/// otherwise `None`, and what the request's answer needs is noted in the
/// request for [`expose`]. A request from another origin gets no CORS
/// headers (a browser then keeps the answer from the page).
pub fn decide(
    origins: &Origins,
    request: &mut RequestHeader,
) -> Result<Option<Box<ResponseHeader>>> {
    if !origins.enabled() {
        return Ok(None);
    }
    let allow = request
        .headers
        .get("origin")
        .and_then(|o| origins.allow(o.as_bytes()));
    let preflight = request.method == http::Method::OPTIONS
        && request
            .headers
            .contains_key("access-control-request-method");
    let vary = !origins.any;
    match allow {
        Some(allowed) if preflight => {
            let mut header = ResponseHeader::build(204, Some(7))?;
            header.insert_header("access-control-allow-origin", allowed)?;
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
            Ok(Some(Box::new(header)))
        }
        allow => {
            if allow.is_some() || vary {
                request.extensions_mut().insert(Noted { allow, vary });
            }
            Ok(None)
        }
    }
}

/// Adds what CORS needs to the answer of a request [`decide`] noted.
pub fn expose(request: &RequestHeader, response: &mut ResponseHeader) -> Result<()> {
    let Some(Noted { allow, vary }) = request.extensions.get::<Noted>() else {
        return Ok(());
    };
    if let Some(origin) = allow {
        response.insert_header("access-control-allow-origin", origin.clone())?;
        response.insert_header("access-control-expose-headers", EXPOSED)?;
    }
    if *vary {
        response.append_header("vary", "Origin")?;
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
            vec!["https://a.example:99999".to_string()],
            vec!["https://a.example:x".to_string()],
            vec!["https://user@a.example".to_string()],
        ] {
            assert!(Origins::parse(&bad).is_err(), "{bad:?}");
        }
        // As a browser sends them: no default port, lower case.
        for (given, sent) in [
            ("https://A.example:443", "https://a.example"),
            ("http://a.example:80", "http://a.example"),
            ("http://a.example:8080", "http://a.example:8080"),
            ("https://a.example:80", "https://a.example:80"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("http://[::1]", "http://[::1]"),
        ] {
            assert_eq!(origin(given).as_deref(), Ok(sent), "{given}");
        }
    }

    #[test]
    fn allowed_origins_only() {
        let listed = Origins::parse(&["https://App.example:8443".into()]).expect("origins");
        let mut from = request("POST", &[("origin", "https://app.example:8443")]);
        assert!(matches!(decide(&listed, &mut from), Ok(None)));
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

        // Another origin, or none: no CORS headers, but Vary (the answer
        // depends on the origin).
        for other in [
            request("POST", &[("origin", "https://evil.example")]),
            request("POST", &[]),
        ] {
            let mut other = other;
            assert!(matches!(decide(&listed, &mut other), Ok(None)));
            let mut answer = ResponseHeader::build(200, None).expect("response");
            expose(&other, &mut answer).expect("headers");
            assert!(answer.headers.get("access-control-allow-origin").is_none());
            assert_eq!(answer.headers["vary"], "Origin");
        }
        // Off: nothing at all.
        let off = Origins::default();
        let mut from = request("POST", &[("origin", "https://app.example:8443")]);
        assert!(matches!(decide(&off, &mut from), Ok(None)));
        let mut answer = ResponseHeader::build(200, None).expect("response");
        expose(&from, &mut answer).expect("headers");
        assert!(answer.headers.is_empty());
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
        let Ok(Some(answer)) = decide(&any, &mut preflight) else {
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
        assert!(matches!(decide(&any, &mut plain), Ok(None)));
        let mut answer = ResponseHeader::build(405, None).expect("response");
        expose(&plain, &mut answer).expect("headers");
        assert_eq!(answer.headers["access-control-allow-origin"], "*");
        assert!(answer.headers.get("vary").is_none(), "\"*\" does not vary");
    }
}
