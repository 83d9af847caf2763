//! A minimal HTTP/1.1 client (plain `http://` only) for callback delivery and for the tests'
//! merchant side. One connection per request, so every attempt is independent, as a platform's
//! callback attempts are.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A request to send.
#[derive(Clone, Debug)]
pub struct OutgoingRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Absolute `http://host:port/path?query` URL.
    pub url: String,
    /// Header name/value pairs, sent in order.
    pub headers: Vec<(String, String)>,
    /// Exact body bytes.
    pub body: Vec<u8>,
}

impl OutgoingRequest {
    /// A POST of `body` with one `Content-Type`.
    pub fn post(url: impl Into<String>, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".to_owned(),
            url: url.into(),
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Header name (lower case) / value pairs.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why no reply was obtained.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Only `http://host[:port]/…` URLs are supported.
    #[error("unsupported URL {0:?} (only http:// is supported)")]
    BadUrl(String),
    /// The whole exchange did not finish within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Transport(String),
}

/// Splits `http://host:port/path?q` into (`host:port`, `/path?q`).
fn split_url(url: &str) -> Result<(String, String), SendError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| SendError::BadUrl(url.to_owned()))?;
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err(SendError::BadUrl(url.to_owned()));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, target))
}

/// Sends `request` and reads the whole reply, all within `timeout`.
///
/// # Errors
/// [`SendError`].
pub async fn send(request: &OutgoingRequest, timeout: Duration) -> Result<Reply, SendError> {
    tokio::time::timeout(timeout, send_inner(request))
        .await
        .map_err(|_| SendError::Timeout(timeout))?
}

async fn send_inner(request: &OutgoingRequest) -> Result<Reply, SendError> {
    let transport = |e: &dyn std::fmt::Display| SendError::Transport(e.to_string());
    let (authority, target) = split_url(&request.url)?;
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| transport(&e))?;
    // Without it, Nagle holds a request's body until the headers are ACKed (40 ms delayed ACK).
    stream.set_nodelay(true).map_err(|e| transport(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    let driver = tokio::spawn(async move {
        // The connection ends with the exchange; its error surfaces through `send_request`.
        let _ = connection.await;
    });
    let mut builder = hyper::Request::builder()
        .method(request.method.as_str())
        .uri(target)
        .header(hyper::header::HOST, authority.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let http_request = builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|e| transport(&e))?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_raw_target() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/a/b?x=%20").unwrap(),
            ("127.0.0.1:8080".to_owned(), "/a/b?x=%20".to_owned())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".to_owned(), "/".to_owned())
        );
        assert_eq!(
            split_url("http://h:1?q=1").unwrap(),
            ("h:1".to_owned(), "/?q=1".to_owned())
        );
        assert!(split_url("https://h/").is_err());
    }
}
