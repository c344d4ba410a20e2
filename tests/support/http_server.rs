//! A tiny threaded HTTP/1.1 server on 127.0.0.1 for the in-process fakes
//! ([`super::imds::Imds`], [`super::lifecycle_proxy::LifecycleProxy`]).
//!
//! One thread accepts, one thread per connection serves requests in order.
//! Keep-alive follows HTTP/1.1 (persistent unless the client sends
//! `Connection: close`; HTTP/1.0 closes unless it asks for `keep-alive`), so
//! the AWS SDK's pooled hyper client works against it. Request bodies are
//! read by `Content-Length` (chunked request bodies are answered with 501);
//! every response carries a `Content-Length`. Dropping the server stops the
//! accept loop and shuts down every open connection.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::util::free_port;

/// Longest request head (request line + headers) the server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the server accepts.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A connection idle (or stalled mid-request) this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One parsed HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method as sent, e.g. `GET`.
    pub method: String,
    /// Request target as sent: path plus optional `?query`.
    pub target: String,
    /// Protocol version as sent, e.g. `HTTP/1.1`.
    pub version: String,
    /// Headers in order, names as sent (compare case-insensitively), values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (empty if none).
    pub body: Vec<u8>,
}

impl Request {
    /// Value of the first header named `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string of the target (without `?`), or `""`.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

/// A response to send. `Content-Length` and `Connection` are added by the
/// server; do not put them in `headers`.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, a `Content-Type` header and `body`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Reason phrase for the status codes the fakes use.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The request handler: called on the connection's thread for each request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; see the module docs. Dropping it stops it.
pub struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds a [`free_port`] of 127.0.0.1 (retrying with another port if the
    /// bind fails) and serves `handler` on it. `name` appears in thread names
    /// and panics. Panics if no port can be bound.
    pub fn start(name: &str, handler: Handler) -> HttpServer {
        let mut errors = Vec::new();
        let (listener, port) = loop {
            let port = free_port();
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break (l, port),
                Err(e) => {
                    errors.push(format!("127.0.0.1:{port}: {e}"));
                    assert!(
                        errors.len() < 10,
                        "{name}: cannot bind a loopback port: {}",
                        errors.join("; ")
                    );
                }
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let accept = {
            let stop = stop.clone();
            let conns = conns.clone();
            let name = name.to_string();
            thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || accept_loop(&name, listener, stop, conns, handler))
                .expect("HttpServer::start: cannot spawn the accept thread")
        };
        HttpServer {
            port,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the loop sees the flag. If that
        // fails, leave the accept thread behind rather than hang here.
        let woke =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1))
                .is_ok();
        if let Some(accept) = self.accept.take()
            && woke
        {
            let _ = accept.join();
        }
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    name: &str,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    handler: Handler,
) {
    let next_id = AtomicU64::new(0);
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. EMFILE; do not spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, clone);
        }
        let conns = conns.clone();
        let handler = handler.clone();
        let stop = stop.clone();
        let spawned = thread::Builder::new()
            .name(format!("{name}-conn-{id}"))
            .spawn(move || {
                serve_connection(stream, &handler, &stop);
                conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        if let Err(e) = spawned {
            eprintln!("warning: {name}: cannot spawn a connection thread: {e}");
        }
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader, &mut writer) {
            Ok(Some(req)) => req,
            Ok(None) => return, // clean EOF between requests
            Err(ReadError::Io(_)) => return,
            Err(ReadError::Reject(status, msg)) => {
                let resp = Response::new(status, "text/plain", msg);
                let _ = write_response(&mut writer, &resp, true);
                return;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let close = wants_close(&req);
        let resp = handler(&req);
        if write_response(&mut writer, &resp, close).is_err() || close {
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
    }
}

fn wants_close(req: &Request) -> bool {
    let conn = req
        .header("connection")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if req.version == "HTTP/1.0" {
        !conn.contains("keep-alive")
    } else {
        conn.contains("close")
    }
}

enum ReadError {
    Io(io::Error),
    /// Answer with this status and message, then close.
    Reject(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads one request; `Ok(None)` on EOF before its first byte.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Option<Request>, ReadError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // tolerate stray CRLF between requests (RFC 9112 2.2)
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(ReadError::Reject(400, "request head too large".into()));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Reject(
            400,
            format!("bad request line {request_line:?}"),
        ));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Reject(
            501,
            "chunked request bodies are not supported by this test server".into(),
        ));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Reject(400, format!("bad Content-Length {v:?}")))?,
    };
    if len > MAX_BODY {
        return Err(ReadError::Reject(413, "request body too large".into()));
    }
    if len > 0
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    req.body = body;
    Ok(Some(req))
}

fn write_response(w: &mut TcpStream, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    w.write_all(&out)?;
    w.flush()
}
