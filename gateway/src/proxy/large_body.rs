//! Requests whose body the gateway had to read whole to find the model and
//! that are larger than pingora's replay buffer: pingora cannot send such a
//! body on by itself, so the gateway forwards it with pingora's own
//! connector (pooled connections to the worker's socket) and streams the
//! response back, unbuffered, like the proxy path does.

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
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
    let mut request = session.req_header().clone();
    request.insert_header("content-length", body.len().to_string())?;
    request.remove_header("transfer-encoding");
    // The body is whole and sent at once: nothing to wait for.
    request.remove_header("expect");
    upstream.write_request_header(Box::new(request)).await?;
    upstream.write_request_body(body, true).await?;
    upstream.finish_request_body().await?;
    // The final response, past any informational one.
    let header = loop {
        upstream.read_response_header().await?;
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
    while let Some(chunk) = upstream.read_response_body().await? {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None, true).await?;
    connector.release_http_session(upstream, peer, None).await;
    Ok(status)
}
