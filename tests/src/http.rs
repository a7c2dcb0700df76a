//! A small blocking HTTP/1.1 client for tests: one request per connection,
//! over TCP or a unix socket, raw bytes allowed, so malformed requests can
//! be sent as easily as good ones.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Where to connect: the `address` a thaw process announced
/// (`HOST:PORT` or `unix:PATH`).
#[derive(Debug, Clone)]
pub struct Client {
    address: String,
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Reads until `needle` has arrived; returns what was read.
fn read_until(stream: &mut dyn Read, needle: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid("the connection closed before the awaited bytes"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

impl Client {
    /// A client for `address`.
    pub fn new(address: &str) -> Client {
        Client {
            address: address.to_string(),
        }
    }

    fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        let timeout = Some(Duration::from_secs(60));
        if let Some(path) = self.address.strip_prefix("unix:") {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(timeout)?;
            Ok(Box::new(s))
        } else {
            let s = TcpStream::connect(&self.address)?;
            s.set_read_timeout(timeout)?;
            Ok(Box::new(s))
        }
    }

    /// The address it connects to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.request("POST", path, Some(body.to_string().as_bytes()))
    }

    /// A request with an optional body (Content-Length set).
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Response {
        self.request_with(method, path, &[], body)
    }

    /// A request with extra headers and an optional body (Content-Length
    /// set).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            raw.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.raw(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.address))
    }

    /// Sends a `POST` with a JSON body, reads until `needle` has arrived (a
    /// streamed response's first event, say), then hangs up. Returns what
    /// was read.
    pub fn post_and_hang_up(
        &self,
        path: &str,
        body: &serde_json::Value,
        needle: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        let mut stream = self.open_post(path, body)?;
        read_until(&mut stream, needle)
    }

    /// Like [`Client::post_and_hang_up`], but the connection stays open
    /// (and the response streaming) until the returned value is dropped.
    pub fn post_and_hang_up_later(
        &self,
        path: &str,
        body: &serde_json::Value,
        needle: &[u8],
    ) -> std::io::Result<Box<dyn Read + Send>> {
        let mut stream = self.open_post(path, body)?;
        read_until(&mut stream, needle)?;
        Ok(stream)
    }

    fn open_post(&self, path: &str, body: &serde_json::Value) -> std::io::Result<Box<dyn Stream>> {
        let body = body.to_string();
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = self.connect()?;
        stream.write_all(raw.as_bytes())?;
        Ok(stream)
    }

    /// A `POST` of `body` that first asks for a go-ahead (`Expect:
    /// 100-continue`) and sends the body only once it came: the interim
    /// response's head, and the final response.
    pub fn post_expecting_continue(
        &self,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(String, Response)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\
             expect: 100-continue\r\n\r\n",
            body.len()
        );
        self.after_continue(head.as_bytes(), body)
    }

    /// Sends `head` (a request's head that asks for a go-ahead), reads the
    /// first response head to arrive (the interim one), then sends `body`
    /// (whatever it holds: a chunked body's framing too, or only part of
    /// it) and reads the rest to the connection's end. A server may answer
    /// before the whole body is written: the write then fails, and the
    /// answer is still read.
    pub fn after_continue(&self, head: &[u8], body: &[u8]) -> std::io::Result<(String, Response)> {
        let mut stream = self.connect()?;
        stream.write_all(head)?;
        let interim = read_until(&mut stream, b"\r\n\r\n")?;
        let _ = stream.write_all(body).and_then(|()| stream.flush());
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
        Ok((
            String::from_utf8_lossy(&interim).into_owned(),
            parse(&rest)?,
        ))
    }

    /// Sends several requests in one write (pipelined, HTTP/1.1) and reads
    /// the responses to the connection's end (the last request should ask
    /// for `connection: close`).
    pub fn pipelined(&self, requests: &[Vec<u8>]) -> std::io::Result<Vec<Response>> {
        let mut stream = self.connect()?;
        stream.write_all(&requests.concat())?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf)?;
        let mut responses = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or_else(|| invalid("no end of headers"))?
                + 4;
            let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("a pipelined response without content-length"))?;
            let whole = rest
                .get(..end + length)
                .ok_or_else(|| invalid("truncated response"))?;
            responses.push(parse(whole)?);
            rest = &rest[end + length..];
        }
        Ok(responses)
    }

    /// Sends raw bytes and reads the response to the connection's end.
    /// A server may answer and close before the whole request is written
    /// (a 413 decided from Content-Length): the write then fails, and the
    /// answer is still read.
    pub fn raw(&self, request: &[u8]) -> std::io::Result<Response> {
        let mut stream = self.connect()?;
        let written = stream.write_all(request).and_then(|()| stream.flush());
        let mut buf = Vec::new();
        let read = stream.read_to_end(&mut buf);
        match (written, parse(&buf)) {
            (_, Ok(response)) => Ok(response),
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => read.and(Err(e)),
        }
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Parses a whole response (to the connection's end).
pub fn parse(buf: &[u8]) -> std::io::Result<Response> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers (connection closed without a response?)"))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
