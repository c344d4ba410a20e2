//! A small HTTP/1.1 server on 127.0.0.1 for the in-process fakes
//! ([`super::imds::Imds`], [`super::lifecycle_proxy::LifecycleProxy`]):
//! hyper on a private tokio runtime in a background thread.
//!
//! hyper speaks the protocol: keep-alive (the AWS SDK's pooled client
//! relies on it), chunked request bodies, `Expect: 100-continue`. The
//! synchronous handler runs on the runtime's blocking pool, once per
//! request. Request heads over 64 KiB are answered 431, bodies over 16 MiB
//! 413; a connection idle (or stalled in a request head) for 120 s is
//! closed. Every response carries a `Content-Length`, and `Connection:
//! close` when the client asked to close. Dropping the server stops it and
//! closes every open connection.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::CONNECTION;
use hyper::service::service_fn;
use hyper::{Version, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::util::free_port;

/// Longest request head (request line + headers) the server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the server accepts.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A connection idle (or stalled mid-request) this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One HTTP request, body read in full.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method as sent, e.g. `GET`.
    pub method: String,
    /// Request target: path plus optional `?query`.
    pub target: String,
    /// Protocol version, e.g. `HTTP/1.1`.
    pub version: String,
    /// Headers, names lowercased (compare case-insensitively), values trimmed.
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

/// The request handler: called on a blocking-pool thread for each request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; see the module docs. Dropping it stops it.
pub struct HttpServer {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
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
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: cannot make the listener non-blocking: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("{name}-handler"))
            .build()
            .unwrap_or_else(|e| panic!("{name}: cannot build a tokio runtime: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("{name}-http"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("HttpServer: cannot register the listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, handler) => {}
                    }
                });
                // Drops every connection task, closing its socket; gives
                // handlers still running a moment to finish.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .unwrap_or_else(|e| panic!("{name}: cannot spawn the server thread: {e}"));
        HttpServer {
            port,
            stop: Some(stop),
            thread: Some(thread),
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, handler: Handler) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. EMFILE; do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| serve(handler.clone(), req));
            // A connection error only ends this connection.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .max_header_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads the body of `req`, runs `handler` on it and converts its answer.
async fn serve(
    handler: Handler,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (head, body) = req.into_parts();
    if body.size_hint().lower() > MAX_BODY as u64 {
        // A Content-Length over the limit: refuse before reading.
        return Ok(plain(413, "request body too large"));
    }
    let body = tokio::time::timeout(IDLE_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let body = match body {
        Ok(Ok(body)) => body.to_bytes().to_vec(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Ok(plain(413, "request body too large"));
        }
        Ok(Err(e)) => return Ok(plain(400, &format!("cannot read the request body: {e}"))),
        Err(_) => return Ok(plain(408, "request body timed out")),
    };
    let connection = head
        .headers
        .get(CONNECTION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    let close = if head.version == Version::HTTP_10 {
        !connection.contains("keep-alive")
    } else {
        connection.contains("close")
    };
    let request = Request {
        method: head.method.to_string(),
        target: head
            .uri
            .path_and_query()
            .map_or_else(|| head.uri.to_string(), ToString::to_string),
        version: format!("{:?}", head.version),
        headers: head
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                (k.to_string(), v)
            })
            .collect(),
        body,
    };
    let resp = match tokio::task::spawn_blocking(move || handler(&request)).await {
        Ok(resp) => resp,
        Err(e) => Response::new(500, "text/plain", format!("the handler failed: {e}")),
    };
    let mut builder = hyper::Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if close {
        builder = builder.header(CONNECTION, "close");
    }
    Ok(builder
        .body(Full::new(Bytes::from(resp.body)))
        .unwrap_or_else(|e| plain(500, &format!("the handler's response is invalid: {e}"))))
}

fn plain(status: u16, body: &str) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status code");
    resp
}
