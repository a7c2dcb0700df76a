//! Requests whose body the gateway had to read whole to find the model and
//! that are larger than pingora's replay buffer: pingora cannot send such a
//! body on by itself, so the gateway forwards it with pingora's own
//! connector (pooled connections to the worker's socket) and streams the
//! response back, unbuffered, like the proxy path does.

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

/// Sends the request header and `body` on `upstream` (a connection from
/// `connector` to `peer`), then streams the response to the client with
/// `decorate` applied to its header. Returns the response status.
pub async fn forward(
    connector: &Connector,
    mut upstream: HttpSession,
    session: &mut Session,
    peer: &HttpPeer,
    body: Bytes,
    decorate: impl FnOnce(&mut Session, &mut ResponseHeader) -> Result<()>,
) -> Result<u16> {
    upstream.set_read_timeout(peer.options.read_timeout);
    let mut request = session.req_header().clone();
    strip_hop_by_hop(&mut request);
    request.insert_header("content-length", body.len().to_string())?;
    // The body is whole and sent at once: nothing to wait for.
    request.remove_header("expect");
    // The worker's failures are marked as its own (the client's are the
    // session's), as the proxy path marks them.
    upstream
        .write_request_header(Box::new(request))
        .await
        .map_err(|e| e.into_up())?;
    upstream
        .write_request_body(body, true)
        .await
        .map_err(|e| e.into_up())?;
    upstream
        .finish_request_body()
        .await
        .map_err(|e| e.into_up())?;
    // The final response, past any informational one.
    let header = loop {
        upstream
            .read_response_header()
            .await
            .map_err(|e| e.into_up())?;
        let Some(header) = upstream.response_header() else {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "the worker sent no response header",
            );
        };
        if !header.status.is_informational() {
            break header;
        }
    };
    let mut header = header.clone();
    let status = header.status.as_u16();
    decorate(session, &mut header)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    while let Some(chunk) = upstream
        .read_response_body()
        .await
        .map_err(|e| e.into_up())?
    {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None, true).await?;
    connector.release_http_session(upstream, peer, None).await;
    Ok(status)
}

/// Takes off the headers that describe the client's connection, not the
/// request (RFC 9110 §7.6.1): the standard ones and those its `Connection`
/// names. The worker's connection is the gateway's own, kept alive for the
/// next request (a client's `Connection: close` would end it).
fn strip_hop_by_hop(request: &mut RequestHeader) {
    let nominated: Vec<String> = request
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in nominated.iter().map(String::as_str).chain(HOP_BY_HOP) {
        request.remove_header(name);
    }
}

/// The hop-by-hop headers of HTTP/1.1 and their common predecessors.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_connection_headers_stay_with_the_client() {
        let mut request = RequestHeader::build("POST", b"/v1/embeddings", None).expect("request");
        for (name, value) in [
            ("connection", "close, x-hop"),
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("authorization", "Bearer t"),
        ] {
            request.append_header(name, value).expect("header");
        }
        strip_hop_by_hop(&mut request);
        let mut left: Vec<&str> = request.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }
}
