//! The one HTTP client for plugins: wasi:http requests with JSON helpers.
//!
//! Requests go through the host, which allows only the authorities granted to the
//! plugin; anything else fails with [`Error::Denied`] (and the host audits it). The
//! call's deadline and response-size cap are enforced by the host as well.
//!
//! ```no_run
//! use latchkey_plugin_sdk::http;
//! # fn run() -> Result<(), latchkey_plugin_sdk::ProviderError> {
//! let me: serde_json::Value = http::get("https://api.example.com/v1/me")
//!     .bearer("token")
//!     .send()?
//!     .error_for_status()?
//!     .json()?;
//! # Ok(()) }
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The host refused the destination (not granted, or resolves somewhere
    /// prohibited).
    Denied,
    /// The service answered with this non-success status (from
    /// [`Response::error_for_status`]).
    Status(u16),
    /// The request could not be built (bad URL or header).
    InvalidRequest(String),
    /// Connection, TLS, timeout or protocol failure.
    Transport(String),
    /// The body was not the expected JSON.
    Json(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Denied => f.write_str("request denied by the host"),
            Self::Status(s) => write!(f, "service answered {s}"),
            Self::InvalidRequest(w) => write!(f, "invalid request: {w}"),
            Self::Transport(w) => write!(f, "transport error: {w}"),
            Self::Json(w) => write!(f, "invalid JSON: {w}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => Self::Denied,
            other => Self::Transport(format!("{other:?}")),
        }
    }
}

/// An HTTP request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// `GET url`.
pub fn get(url: &str) -> Request {
    Request::new(Method::Get, url)
}

/// `POST url`.
pub fn post(url: &str) -> Request {
    Request::new(Method::Post, url)
}

/// `DELETE url`.
pub fn delete(url: &str) -> Request {
    Request::new(Method::Delete, url)
}

/// `PUT url`.
pub fn put(url: &str) -> Request {
    Request::new(Method::Put, url)
}

impl Request {
    /// A request with any method.
    pub fn new(method: Method, url: &str) -> Self {
        Self {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Adds `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Json(e.to_string()))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sets an `application/x-www-form-urlencoded` body from pairs.
    pub fn form(self, pairs: &[(&str, &str)]) -> Self {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, Error> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::from_list(&self.headers)
            .map_err(|e| Error::InvalidRequest(format!("header: {e:?}")))?;
        let req = OutgoingRequest::new(headers);
        let invalid = |what: &str| Error::InvalidRequest(what.to_owned());
        req.set_method(&self.method)
            .map_err(|()| invalid("method"))?;
        req.set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        req.set_authority(Some(authority))
            .map_err(|()| invalid("authority"))?;
        req.set_path_with_query(Some(path))
            .map_err(|()| invalid("path"))?;
        let out_body = req.body().map_err(|()| invalid("body"))?;
        let future = outgoing_handler::handle(req, None)?;
        {
            let stream = out_body
                .write()
                .map_err(|()| Error::Transport("request body stream".into()))?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| Error::Transport(format!("writing body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(out_body, None)?;
        let response = loop {
            match future.get() {
                Some(r) => break r,
                None => future.subscribe().block(),
            }
        };
        let response = response.map_err(|()| Error::Transport("response taken twice".into()))??;
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| Error::Transport("response body".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| Error::Transport("response body stream".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(Error::Transport(e.to_debug_string()))
                    }
                }
            }
        }
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// `Err(Error::Status)` unless the status is 2xx.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(Error::Status(self.status))
        }
    }

    /// Parses the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Json(e.to_string()))
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Splits `scheme://authority/path?query`.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::InvalidRequest(
            "url must start with http:// or https://".into(),
        ));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(Error::InvalidRequest("url has no host".into()));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// `application/x-www-form-urlencoded` encoding (WHATWG URL §5.2, the encoding RFC
/// 6749 Appendix B asks for): space becomes `+`, `*-._` and alphanumerics stay.
pub fn form_urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, FORM)
        .to_string()
        .replace("%20", "+")
}

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is escaped.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a form body escapes: everything but alphanumerics and `*-._`.
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let (s, a, p) = split_url("https://api.x.com/v1?a=b").expect("valid");
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("api.x.com", "/v1?a=b"));
        let (_, a, p) = split_url("http://127.0.0.1:8080").expect("valid");
        assert_eq!((a, p), ("127.0.0.1:8080", "/"));
        assert!(split_url("ftp://x").is_err());
    }

    #[test]
    fn urlencodes_reserved_characters() {
        assert_eq!(urlencode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn form_encoding_turns_spaces_into_plus_and_keeps_star() {
        assert_eq!(form_urlencode("a b*c~d+e%20"), "a+b*c%7Ed%2Be%2520");
    }
}
