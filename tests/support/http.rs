//! A small synchronous HTTP/1.x client on hyper, enough to probe the
//! agent's status endpoints, the test registries, moto and the fakes.
//!
//! Each request opens its own connection and runs on a private runtime in a
//! helper thread ([`super::moto::block_on`]), so the functions work from
//! plain `#[test]`s and from inside `#[tokio::test]`s alike.

use std::io;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Method, Request, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::moto::block_on;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for one whole exchange (send the request, read the response).
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A parsed HTTP response. Header names are lowercased.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Headers, names lowercased, values trimmed (several values of one
    /// name in the order received).
    pub headers: Vec<(String, String)>,
    /// Body with any chunked transfer-encoding removed.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Value of the first header named `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `addr` (`host:port`) and reads the whole response.
///
/// Uses HTTP/1.1 with `Connection: close`, adds `Host`, `Content-Length`
/// (when a body is given or the method is POST/PUT/PATCH) and the given
/// extra `headers`. Returns `None` on any connection or protocol error, a
/// timeout (3 s to connect, 15 s for the exchange) or a malformed
/// response: callers typically poll with [`super::wait_until`].
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<HttpResponse> {
    request(addr, method, path, headers, body, false).ok()
}

/// `GET path` on `addr`; returns `(status, body text)`, or `None` if the
/// server could not be reached or the exchange failed (see [`http_request`]).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let resp = request(addr, "GET", path, &[], &[], false).ok()?;
    Some((resp.status, resp.text()))
}

/// `GET path` on `addr` and parses the body as JSON, whatever the status.
/// Returns `None` if the server could not be reached; panics (with status
/// and body) if it answered with something that is not JSON.
pub fn http_get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let (status, body) = http_get(addr, path)?;
    match serde_json::from_str(&body) {
        Ok(v) => Some(v),
        Err(e) => {
            panic!("GET http://{addr}{path} answered {status} with a non-JSON body ({e}): {body:?}")
        }
    }
}

/// [`http_request`] with errors, and HTTP/1.0 instead of 1.1 if `http10`.
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    http10: bool,
) -> io::Result<HttpResponse> {
    request_within(addr, method, path, headers, body, http10, IO_TIMEOUT)
}

/// [`request`] with `io_timeout` instead of 15 s for the exchange.
pub(crate) fn request_within(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    http10: bool,
    io_timeout: Duration,
) -> io::Result<HttpResponse> {
    let method = Method::from_bytes(method.as_bytes()).map_err(io::Error::other)?;
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .version(if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        })
        .header(HOST, addr)
        .header(USER_AGENT, "berth-tests");
    if !http10 {
        req = req.header(CONNECTION, "close");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() || matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        req = req.header(CONTENT_LENGTH, body.len());
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(io::Error::other)?;
    send(addr, req, io_timeout)
}

/// Sends `req` as is over a fresh connection to `addr` (`host:port`) and
/// reads the whole response; `io_timeout` bounds the exchange after the
/// connect (3 s).
pub(crate) fn send(
    addr: &str,
    req: Request<Full<Bytes>>,
    io_timeout: Duration,
) -> io::Result<HttpResponse> {
    let addr = addr.to_string();
    block_on(async move {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
            // The connection ends when the exchange is over (`Connection:
            // close`, or the sender is dropped); its errors also surface
            // through `send_request`.
            tokio::spawn(conn);
            let resp = sender.send_request(req).await.map_err(io::Error::other)?;
            let (head, body) = resp.into_parts();
            let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
            let headers = head
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                    (k.as_str().to_string(), v)
                })
                .collect();
            Ok(HttpResponse {
                status: head.status.as_u16(),
                headers,
                body: body.to_vec(),
            })
        };
        timeout(io_timeout, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP exchange timed out"))?
    })
}
