//! Connection limits against the real binary, over raw loopback sockets: connections over
//! the total or per-client limit get a 503 with a V2 error body and are closed; connections
//! that send nothing, or send their head too slowly, are closed after the header-read
//! timeout; idle keep-alive connections after the idle timeout; too many or too large
//! headers are 431; a body that never finishes is 408. After each, the server serves.

use invariant_blackbox::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

async fn server(extra: &str) -> Server {
    Server::start_with(ServerOptions {
        server: extra.to_string(),
        ..Default::default()
    })
    .await
}

fn addr(s: &Server) -> SocketAddr {
    s.url.trim_start_matches("http://").parse().unwrap()
}

/// A connection from `from` (a loopback address: 127.0.0.0/8 is all loopback on Linux).
fn connect_from(s: &Server, from: &str) -> TcpStream {
    let socket = std::net::TcpStream::connect(addr(s));
    if from == "127.0.0.1" {
        return socket.unwrap();
    }
    // std cannot bind before connecting: tokio's socket can.
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    let std_socket = tokio::net::TcpSocket::new_v4().unwrap();
    std_socket.bind(local).unwrap();
    let stream = futures_block(std_socket.connect(addr(s))).unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Reads until the server closes the connection (or `limit` passes); returns what came and
/// whether it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

fn live_request() -> &'static [u8] {
    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_are_refused_and_silent_ones_are_closed() {
    let s = server("max_connections = 30\nmax_connections_per_client = 10\nheader_read_timeout_ms = 700\n").await;
    // Ten silent connections from one client fill its share.
    let mut silent: Vec<TcpStream> = (0..10).map(|_| connect_from(&s, "127.0.0.1")).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = connect_from(&s, "127.0.0.1");
    let (reply, closed) = read_until_closed(&mut over, Duration::from_secs(2));
    assert!(closed, "the eleventh connection was kept open");
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains(r#""error":"this client has too many open connections"#),
        "{reply}"
    );
    // Another client is still served meanwhile.
    let mut other = connect_from(&s, "127.0.0.2");
    other.write_all(live_request()).unwrap();
    let mut buf = [0u8; 512];
    let n = other.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(other);
    // The silent ones are closed after the header-read timeout, not kept forever.
    let started = Instant::now();
    for c in &mut silent {
        let (_, closed) = read_until_closed(c, Duration::from_secs(3));
        assert!(closed, "a connection that sent nothing was kept open");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // A head sent one byte at a time, slower than the timeout allows, is cut off too.
    let mut slow = connect_from(&s, "127.0.0.1");
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
        .take(200)
    {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !closed {
        closed = read_until_closed(&mut slow, Duration::from_secs(1)).1;
    }
    assert!(closed, "a slow head was served for {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // The freed slots serve again.
    s.assert_still_serving().await;
    let mut again = connect_from(&s, "127.0.0.1");
    again.write_all(live_request()).unwrap();
    let n = again.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_limit_holds_across_clients() {
    let s = server("max_connections = 4\nmax_connections_per_client = 100\n").await;
    // The harness's own client may hold a pooled connection: open connections from other
    // addresses until one is refused; at most 4 are ever open.
    let mut held = Vec::new();
    let mut refusal = None;
    for i in 2..10 {
        let mut c = connect_from(&s, &format!("127.0.0.{i}"));
        // Long enough for a refusal to arrive on a loaded machine.
        c.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(n) if n > 0 => {
                refusal = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
            _ => held.push(c),
        }
    }
    let reply = refusal.expect("no connection was refused");
    assert!((1..=4).contains(&held.len()), "{} connections were held", held.len());
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("server.max_connections"), "{reply}");
    // Freed slots serve again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(&s, "127.0.0.20");
    again.write_all(live_request()).unwrap();
    let mut buf = [0u8; 512];
    let n = again.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_and_busy_ones_do_not() {
    let s = server("idle_timeout_ms = 800\nheader_read_timeout_ms = 5000\n").await;
    let mut c = connect_from(&s, "127.0.0.1");
    let mut buf = [0u8; 512];
    // Requests closer together than the idle timeout keep it open.
    for _ in 0..3 {
        c.write_all(live_request()).unwrap();
        let n = c.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(400));
    }
    // Then idle: closed after the idle timeout.
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut c, Duration::from_secs(3));
    assert!(closed, "an idle keep-alive connection was kept open");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431_and_unfinished_bodies_408() {
    let s = server("max_headers = 16\nmax_header_bytes = 8192\nhttp_request_timeout_ms = 800\n").await;
    let mut many = String::from("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut c = connect_from(&s, "127.0.0.1");
    c.write_all(many.as_bytes()).unwrap();
    let (reply, _) = read_until_closed(&mut c, Duration::from_secs(2));
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let big = format!(
        "GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut c = connect_from(&s, "127.0.0.1");
    let _ = c.write_all(big.as_bytes());
    let (reply, _) = read_until_closed(&mut c, Duration::from_secs(2));
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // A body promised and never finished.
    let mut c = connect_from(&s, "127.0.0.1");
    c.write_all(
        b"POST /v2/models/trust-scorer/versions/1.2.0/infer HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [",
    )
    .unwrap();
    let started = Instant::now();
    let (reply, _) = read_until_closed(&mut c, Duration::from_secs(3));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("server.http_request_timeout_ms"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2));
    s.assert_still_serving().await;
}
