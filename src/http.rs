//! A small HTTP/1.x server for `/metrics` and `/health` (std only), built for a port that
//! anyone on the host can reach: a client that stalls, sends an endless head or opens
//! many connections costs a bounded number of threads for a bounded time, and `/health`
//! (cheap, never limited like `/metrics`) keeps being answered beside it.
//!
//! One thread accepts; a fixed set of [`Limits::workers`] threads serves one connection
//! each. A connection that finds every worker busy gets a `503` at once (best effort: a
//! client that has not sent its request yet may see a reset) and is closed. Each
//! connection carries one request: its head must arrive within [`Limits::head_timeout`]
//! and fit [`Limits::head_bytes`] (else `408` / `431`), its answer must be taken within
//! [`Limits::response_timeout`] (each read or write waits at most
//! [`Limits::io_timeout`]), and it is closed after the answer (`Connection: close`, no
//! keep-alive). Requests that [`Handler::heavy`] names take one of [`Limits::heavy`]
//! slots (else `503`), so clients that never read a large answer leave workers free.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use log::{debug, warn};
use thiserror::Error;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum HttpError {
    /// A thread could not be started.
    #[error("cannot start an HTTP thread: {0}")]
    Thread(io::Error),
}

/// How much one client can take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (one worker thread each).
    pub workers: usize,
    /// Of those, how many may answer a [`Handler::heavy`] request at once.
    pub heavy: usize,
    /// Largest request head (request line and header fields).
    pub head_bytes: usize,
    /// The whole head must arrive within this.
    pub head_timeout: Duration,
    /// The longest wait of one read or write.
    pub io_timeout: Duration,
    /// The whole answer must be taken within this.
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: 8,
            heavy: 4,
            head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// The two methods served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: the GET answer's head only.
    Head,
}

/// What the server hands a [`Handler`]: method and path (no query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET or HEAD.
    pub method: Method,
    /// The path, query and fragment cut off.
    pub path: String,
}

/// Why a request head is refused, with its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: no request line of the form `METHOD TARGET HTTP/1.x`.
    Malformed,
    /// 405: a method other than GET or HEAD.
    Method,
    /// 505: not HTTP/1.0 or HTTP/1.1.
    Version,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra header lines, each ending in `\r\n`.
    pub extra: &'static str,
    /// The body (not sent for HEAD).
    pub body: String,
}

impl Response {
    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: body.into(),
        }
    }
}

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Whether answering `path` is costly (limited to [`Limits::heavy`] at once).
    fn heavy(&self, path: &str) -> bool;
    /// The answer for `path`.
    fn handle(&self, path: &str) -> Response;
}

/// Whether `ip` is a loopback address (also as an IPv4-mapped IPv6 one).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The length of the head at the start of `buf` (through its empty line), once complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let (mut start, mut began) = (0, false);
    while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
        let end = start + i + 1;
        let empty = matches!(&buf[start..end], b"\n" | b"\r\n");
        // Empty lines before the request line are skipped (RFC 9112 section 2.2).
        if empty && began {
            return Some(end);
        }
        began |= !empty;
        start = end;
    }
    None
}

/// Parses a complete request head (see [`head_end`]); header fields are not used.
pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let line = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .find(|l| !l.is_empty())
        .ok_or(HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || target.is_empty() {
        return Err(HeadError::Malformed);
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed),
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(HeadError::Method),
    };
    // origin-form `/path?query`, or absolute-form `http://host/path`.
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = target.strip_prefix("http://") {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        return Err(HeadError::Malformed);
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    Ok(Request {
        method,
        path: path.to_owned(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The bytes of `resp` on the wire (no body for HEAD).
pub fn encode(resp: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        resp.extra
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(resp.body.as_bytes());
    }
    out
}

/// Logs a repeated problem at most once per `every`, with how often it happened since.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            since: 0,
        }
    }

    /// Counts one; `Some(count)` when it is time to log.
    fn hit(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Serves `listener` with `handler` until the process ends: one accept thread and
/// `limits.workers` worker threads named after `name`.
pub fn serve(
    name: &str,
    listener: TcpListener,
    limits: Limits,
    handler: Arc<dyn Handler>,
) -> Result<(), HttpError> {
    // Zero capacity: a connection is handed over only to a worker waiting for one.
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(0);
    let heavy = Arc::new(AtomicUsize::new(0));
    for i in 0..limits.workers.max(1) {
        let (rx, handler, heavy) = (rx.clone(), handler.clone(), heavy.clone());
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                for stream in rx.iter() {
                    connection(stream, &limits, &*handler, &heavy);
                }
            })
            .map_err(HttpError::Thread)?;
    }
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut errors = Throttle::new(Duration::from_secs(60));
            let mut refused = Throttle::new(Duration::from_secs(60));
            loop {
                match listener.accept() {
                    Ok((stream, _)) => match tx.try_send(stream) {
                        Ok(()) => {}
                        Err(TrySendError::Full(stream)) => {
                            busy(stream);
                            if let Some(n) = refused.hit() {
                                warn!("{name}: {n} connection(s) answered 503: all {} workers busy", limits.workers);
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    },
                    Err(e) => {
                        if let Some(n) = errors.hit() {
                            warn!("{name}: accept failed {n} time(s) (last: {e}); going on");
                        }
                        // EMFILE and the like repeat at once: leave the CPU to others.
                        if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
        })
        .map_err(HttpError::Thread)?;
    Ok(())
}

/// Answers a connection no worker can take: 503 without waiting on the client.
fn busy(mut stream: TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    // Take what already came of the request, so that closing sends FIN, not a reset.
    let mut sink = [0u8; 4096];
    let _ = stream.read(&mut sink);
    let mut resp = Response::text(503, "busy\n");
    resp.extra = "Retry-After: 1\r\n";
    let _ = stream.write(&encode(&resp, false));
    let _ = stream.shutdown(Shutdown::Write);
}

/// A [`Limits::heavy`] slot, given back on drop.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Slot<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the head within the limits: Ok(head bytes) or the status to answer (0: the
/// client went away, answer nothing).
fn read_head(stream: &mut TcpStream, limits: &Limits) -> Result<Vec<u8>, u16> {
    let deadline = Instant::now() + limits.head_timeout;
    let mut buf = vec![0u8; limits.head_bytes];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(408);
        }
        // A zero timeout would mean "block forever".
        let wait = left.min(limits.io_timeout).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(wait)).map_err(|_| 0u16)?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(0),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(408)
            }
            Err(_) => return Err(0),
        }
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Ok(buf);
        }
        if len == buf.len() {
            return Err(431);
        }
    }
}

/// Writes `bytes` within the response deadline.
fn write_within(stream: &mut TcpStream, bytes: &[u8], limits: &Limits) -> io::Result<()> {
    let deadline = Instant::now() + limits.response_timeout;
    for chunk in bytes.chunks(64 * 1024) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(
            left.min(limits.io_timeout).max(Duration::from_millis(1)),
        ))?;
        stream.write_all(chunk)?;
    }
    Ok(())
}

/// Serves one connection: one request, one answer, close.
fn connection(mut stream: TcpStream, limits: &Limits, handler: &dyn Handler, heavy: &AtomicUsize) {
    let _ = stream.set_nodelay(true);
    let answer = |stream: &mut TcpStream, resp: &Response, head_only: bool| {
        if let Err(e) = write_within(stream, &encode(resp, head_only), limits) {
            debug!("metrics: answer {} not taken: {e}", resp.status);
        }
    };
    let head = match read_head(&mut stream, limits) {
        Ok(h) => h,
        Err(0) => return,
        Err(status) => {
            answer(
                &mut stream,
                &Response::text(status, format!("{}\n", reason(status))),
                false,
            );
            if status == 431 {
                linger(&mut stream);
            }
            return;
        }
    };
    let req = match parse_head(&head) {
        Ok(r) => r,
        Err(e) => {
            let mut resp = match e {
                HeadError::Malformed => Response::text(400, "bad request\n"),
                HeadError::Method => Response::text(405, "only GET and HEAD\n"),
                HeadError::Version => Response::text(505, "HTTP/1.0 or HTTP/1.1 only\n"),
            };
            if e == HeadError::Method {
                resp.extra = "Allow: GET, HEAD\r\n";
            }
            answer(&mut stream, &resp, false);
            return;
        }
    };
    let head_only = req.method == Method::Head;
    let _slot = if handler.heavy(&req.path) {
        match Slot::take(heavy, limits.heavy) {
            Some(s) => Some(s),
            None => {
                let mut resp = Response::text(503, "busy\n");
                resp.extra = "Retry-After: 1\r\n";
                answer(&mut stream, &resp, head_only);
                return;
            }
        }
    } else {
        None
    };
    answer(&mut stream, &handler.handle(&req.path), head_only);
}

/// After an answer with request bytes left unread: FIN first, then read (bounded) what
/// the client still sends, so that the close does not reset the connection before the
/// client read the answer.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_needs_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nrest"), Some(16));
        // Empty lines before the request line are not its end.
        assert_eq!(head_end(b"\r\n\r\n"), None);
        assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n"), Some(20));
    }

    #[test]
    fn parse_head_takes_get_and_head_and_cuts_the_query() {
        let ok = |h: &[u8]| parse_head(h).unwrap();
        assert_eq!(
            ok(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Request {
                method: Method::Get,
                path: "/metrics".into()
            }
        );
        assert_eq!(
            ok(b"HEAD /health?x=1 HTTP/1.0\r\n\r\n").method,
            Method::Head
        );
        assert_eq!(ok(b"HEAD /health?x=1 HTTP/1.0\r\n\r\n").path, "/health");
        assert_eq!(ok(b"GET /health#f HTTP/1.1\n\n").path, "/health");
        assert_eq!(
            ok(b"\r\nGET http://h:1/metrics?a HTTP/1.1\r\n\r\n").path,
            "/metrics"
        );
        assert_eq!(ok(b"GET http://h:1 HTTP/1.1\r\n\r\n").path, "/");
    }

    #[test]
    fn parse_head_refuses_other_methods_versions_and_garbage() {
        let err = |h: &[u8]| parse_head(h).unwrap_err();
        assert_eq!(err(b"POST /metrics HTTP/1.1\r\n\r\n"), HeadError::Method);
        assert_eq!(err(b"DELETE / HTTP/1.1\r\n\r\n"), HeadError::Method);
        assert_eq!(err(b"GET / HTTP/2.0\r\n\r\n"), HeadError::Version);
        assert_eq!(err(b"GET / FTP/1.0\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"GET /\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"GET  / HTTP/1.1\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"GET / HTTP/1.1 x\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"GET metrics HTTP/1.1\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"G(T / HTTP/1.1\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"GET /\xff HTTP/1.1\r\n\r\n"), HeadError::Malformed);
        assert_eq!(err(b"\r\n\r\n"), HeadError::Malformed);
    }

    #[test]
    fn encode_sends_close_and_length_and_no_body_for_head() {
        let r = Response::text(200, "ok\n");
        let full = String::from_utf8(encode(&r, false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"), "{full}");
        assert!(full.contains("Content-Length: 3\r\n"), "{full}");
        assert!(full.contains("Connection: close\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\nok\n"), "{full}");
        let head = String::from_utf8(encode(&r, true)).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(head.contains("Content-Length: 3\r\n"), "{head}");
    }

    #[test]
    fn heavy_slots_are_bounded_and_given_back() {
        let n = AtomicUsize::new(0);
        let a = Slot::take(&n, 2);
        let b = Slot::take(&n, 2);
        assert!(a.is_some() && b.is_some());
        assert!(Slot::take(&n, 2).is_none());
        drop(a);
        assert!(Slot::take(&n, 2).is_some());
        drop(b);
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn throttle_logs_the_first_and_then_counts() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.hit(), Some(3));
    }

    #[test]
    fn loopback_includes_mapped_ipv4() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.8.9.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
        assert!(!is_loopback("10.1.2.3".parse().unwrap()));
    }
}
