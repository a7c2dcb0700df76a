//! The listeners: sockets bound before pingora and served by it; a drain
//! that stops accepting, lets a request in flight finish, and counts the
//! connection until it closes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::{Fds, ListenFds};
use pingora::services::listening::Service as Listening;
use pingora::services::Service;
use tokio::sync::watch;

use super::listeners::{bind, Prebound, Socket, Tracked, Tracker};

/// Answers every request with 200 `hello`.
struct Hello;

#[async_trait]
impl ServeHttp for Hello {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut r = http::Response::new(b"hello".to_vec());
        r.headers_mut().insert("content-length", 5.into());
        r
    }
}

#[test]
fn a_port_in_use_is_refused_with_its_address() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("address").to_string();
    let e = bind(&addr).expect_err("bound a port in use");
    assert!(e.to_string().contains(&addr), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_serves_the_socket_bound_before_it_started() {
    let listener = bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    assert_ne!(addr.port(), 0);
    assert!(
        TcpListener::bind(addr).is_err(),
        "{addr} is not held between the bind and pingora"
    );
    // Sent before pingora runs: queued on the socket, so answered only
    // if pingora serves this very socket rather than a new one.
    let mut early = TcpStream::connect(addr).expect("connect");
    early
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .expect("send");
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    let (_drain, draining) = watch::channel(false);
    let mut service = Prebound::new(
        Listening::new("test".into(), Hello),
        Socket::Bound(listener),
        draining,
        Arc::default(),
    )
    .expect("prebound");
    let fds: ListenFds = Arc::new(Fds::new().into());
    let (stop, shutdown) = watch::channel(false);
    let table = fds.clone();
    tokio::spawn(async move {
        Service::start_service(&mut service, Some(table), shutdown, 1).await;
    });

    let reply = tokio::task::spawn_blocking(move || {
        let mut reply = String::new();
        early.read_to_string(&mut reply).map(|_| reply)
    })
    .await
    .expect("reader")
    .expect("the early request is answered");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("hello"), "{reply}");
    // In pingora's table, a graceful upgrade passes the socket on.
    assert!(fds.lock().get(&addr.to_string()).is_some());
    let _ = stop.send(true);
}

/// Answers every request with 200 `slow` after the request's body (its
/// length in `content-length`) has been read.
struct EchoAfterBody;

#[async_trait]
impl ServeHttp for EchoAfterBody {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        while let Ok(Some(_)) = session.read_request_body().await {}
        let mut r = http::Response::new(b"slow".to_vec());
        r.headers_mut().insert("content-length", 4.into());
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stops_accepting_and_waits_for_the_request_in_flight() {
    let listener = bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let tracker = Arc::new(Tracker::default());
    let (drain, draining) = watch::channel(false);
    let app = Tracked::new(
        pingora::apps::http_app::HttpServer::new_app(EchoAfterBody),
        tracker.clone(),
    );
    let mut service = Prebound::new(
        Listening::new("test".into(), app),
        Socket::Bound(listener),
        draining,
        Arc::default(),
    )
    .expect("prebound")
    .tracked_by(tracker.clone());
    let (_stop, shutdown) = watch::channel(false);
    let fds: ListenFds = Arc::new(Fds::new().into());
    let served = tokio::spawn(async move {
        Service::start_service(&mut service, Some(fds), shutdown, 1).await;
    });

    // A request whose body is half sent: in flight.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(
        b"POST / HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 4\r\n\r\nab",
    )
    .expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tracker.open() == 0 {
        assert!(std::time::Instant::now() < deadline, "never tracked");
        tokio::task::yield_now().await;
    }
    drain.send_replace(true);
    // The accept loop ends: the service finishes (cleanup included) while
    // the request is still in flight.
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("accepting stopped")
        .expect("service task");
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    assert!(!tracker.drained_within(Duration::from_millis(200)).await);

    slow.write_all(b"cd").expect("rest of the body");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reply = tokio::task::spawn_blocking(move || {
        let mut reply = String::new();
        slow.read_to_string(&mut reply).map(|_| reply)
    })
    .await
    .expect("reader")
    .expect("answered");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("slow"), "{reply}");
    assert!(tracker.drained_within(Duration::from_secs(10)).await);
}
