//! A minimal HTTP/1.1 client: one keep-alive TCP connection, one request at
//! a time, a request rendered once and sent as bytes. Enough to load a
//! server without a client library's own queues in the measurement.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Most response headers parsed.
const MAX_HEADERS: usize = 64;

/// Where to connect.
#[derive(Debug, Clone)]
pub enum Addr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket's path.
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Where to send requests: `http://HOST:PORT/PATH`, or that URL's path and
/// Host header over a unix socket.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: Addr,
    /// `HOST:PORT` as given, for the Host header.
    pub authority: String,
    /// The path and query.
    pub path: String,
}

impl Target {
    /// Parses a plain `http://` URL; connects to `unix` when given, else
    /// resolves the URL's host.
    pub async fn parse(url: &str, unix: Option<PathBuf>) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = match unix {
            Some(path) => Addr::Unix(path),
            None => Addr::Tcp(
                tokio::net::lookup_host(authority)
                    .await
                    .with_context(|| format!("resolving {authority}"))?
                    .next()
                    .with_context(|| format!("{authority} resolves to no address"))?,
            ),
        };
        Ok(Target {
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// Renders a POST (or a GET when `body` is `None`) with extra headers.
    pub fn render(&self, body: Option<&[u8]>, headers: &[(String, String)]) -> Vec<u8> {
        let method = if body.is_some() { "POST" } else { "GET" };
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n",
            self.path, self.authority
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        out
    }
}

/// An open stream of either kind.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b).await,
            Stream::Unix(s) => s.write_all(b).await,
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b).await,
            Stream::Unix(s) => s.read(b).await,
        }
    }
}

/// One open connection.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
}

/// What came back.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The server closes the connection after this response.
    pub close: bool,
}

/// How the response body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Conn {
    /// Connects (over TCP with Nagle off).
    pub async fn connect(addr: &Addr) -> Result<Conn> {
        let stream = match addr {
            Addr::Tcp(a) => {
                let s = TcpStream::connect(a)
                    .await
                    .with_context(|| format!("connecting to {a}"))?;
                s.set_nodelay(true).context("TCP_NODELAY")?;
                Stream::Tcp(s)
            }
            Addr::Unix(p) => Stream::Unix(
                UnixStream::connect(p)
                    .await
                    .with_context(|| format!("connecting to {}", p.display()))?,
            ),
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends a rendered request and reads the whole response.
    pub async fn send(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request).await.context("writing")?;
        let (status, framing, close, head_len) = self.read_head().await?;
        self.buf.drain(..head_len);
        match framing {
            Framing::Length(n) => self.skip(n).await?,
            Framing::Chunked => self.skip_chunked().await?,
            Framing::UntilClose => {
                while self.fill().await? > 0 {}
                self.buf.clear();
                return Ok(Response {
                    status,
                    close: true,
                });
            }
        }
        Ok(Response { status, close })
    }

    /// Reads until a whole response head is buffered.
    async fn read_head(&mut self) -> Result<(u16, Framing, bool, usize)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) =
                resp.parse(&self.buf).context("parsing the response head")?
            {
                let status = resp.code.context("no status code")?;
                let mut framing = Framing::UntilClose;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    let v = std::str::from_utf8(h.value).unwrap_or_default().trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        framing = Framing::Length(v.parse().context("content-length")?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                        && v.eq_ignore_ascii_case("chunked")
                    {
                        framing = Framing::Chunked;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.eq_ignore_ascii_case("close");
                    }
                }
                if status == 204 || status == 304 || (100..200).contains(&status) {
                    framing = Framing::Length(0);
                }
                return Ok((status, framing, close, len));
            }
            if self.fill().await? == 0 {
                bail!("connection closed before a response head");
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.context("reading")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Consumes `n` body bytes.
    async fn skip(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                bail!("connection closed mid-body");
            }
        }
        self.buf.drain(..n);
        Ok(())
    }

    /// Consumes one CRLF-terminated line, returning it without the CRLF.
    async fn line(&mut self) -> Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                bail!("connection closed mid-chunk");
            }
        }
    }

    /// Consumes a chunked body and its trailers.
    async fn skip_chunked(&mut self) -> Result<()> {
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let n = usize::from_str_radix(size, 16)
                .with_context(|| format!("bad chunk size {size:?}"))?;
            if n == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip(n + 2).await?;
        }
    }
}
