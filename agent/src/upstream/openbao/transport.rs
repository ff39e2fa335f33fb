//! Sends one OpenBao / Vault API request, failing over between server addresses.
//!
//! Addresses are tried starting with the one that answered last; an address whose
//! [`Breaker`] is open is skipped. A refused connection, a timeout, a 5xx (other than
//! 501) or a 429 counts as a failure of that address and the next one is tried. A
//! request that is not idempotent (a KV write) moves on only when the connection was
//! never made: after a timeout the write may have been applied, and sending it again
//! elsewhere could turn our own success into a check-and-set conflict. Authentication
//! is the caller's business (`auth`); this module only carries the header it is given.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};

use crate::upstream::breaker::{Breaker, BreakerSettings};
use crate::upstream::{Error, Reason};

/// Whether a request may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Reads, lists, deletes, logins: fail over on any transient failure.
    Safe,
    /// Writes: fail over only when no connection was made.
    Unsafe,
}

/// A server's answer: status and body (the caller parses it).
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

struct Node {
    base: Url,
    breaker: Breaker,
}

/// The addresses of one upstream and the shared HTTP client.
pub(crate) struct Transport {
    upstream: String,
    client: reqwest::Client,
    nodes: Vec<Node>,
    preferred: AtomicUsize,
    namespace: Option<HeaderValue>,
}

const TOKEN_HEADER: &str = "x-vault-token";
const NAMESPACE_HEADER: &str = "x-vault-namespace";

/// The server base URLs (each ending in `/`) and the namespace header, or what is
/// wrong with them, naming the key.
fn parse(
    addresses: &[String],
    namespace: Option<&str>,
) -> Result<(Vec<Url>, Option<HeaderValue>), String> {
    if addresses.is_empty() {
        return Err("addresses: give at least one server URL".to_owned());
    }
    let mut bases = Vec::with_capacity(addresses.len());
    for address in addresses {
        let mut base =
            Url::parse(address).map_err(|_| format!("addresses: {address:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!(
                "addresses: {address:?} must be an http(s) URL with a host"
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        bases.push(base);
    }
    let namespace = match namespace {
        Some(ns) => Some(
            HeaderValue::from_str(ns)
                .map_err(|_| format!("namespace: {ns:?} is not a header value"))?,
        ),
        None => None,
    };
    Ok((bases, namespace))
}

/// What [`Transport::new`] would refuse in `addresses` and `namespace`.
pub(super) fn check_addresses(addresses: &[String], namespace: Option<&str>) -> Result<(), String> {
    parse(addresses, namespace).map(|_| ())
}

impl Transport {
    pub(crate) fn new(
        upstream: &str,
        client: reqwest::Client,
        addresses: &[String],
        namespace: Option<&str>,
        breaker: BreakerSettings,
    ) -> Result<Self, Error> {
        let (bases, namespace) = parse(addresses, namespace).map_err(|reason| Error::Config {
            upstream: upstream.to_owned(),
            reason,
            source: None,
        })?;
        let nodes = bases
            .into_iter()
            .map(|base| Node {
                base,
                breaker: Breaker::new(breaker),
            })
            .collect();
        Ok(Self {
            upstream: upstream.to_owned(),
            client,
            nodes,
            preferred: AtomicUsize::new(0),
            namespace,
        })
    }

    /// Records a failure at `node`; says so when it opens the node's circuit.
    fn failed(&self, node: &Node, address: &str) {
        if let Some(cool_down) = node.breaker.record_failure(Instant::now()) {
            tracing::warn!(
                upstream = %self.upstream,
                %address,
                cool_down = %humantime::format_duration(cool_down),
                "address skipped: circuit breaker open"
            );
        }
    }

    /// Addresses whose circuit is open right now.
    pub(crate) fn open_addresses(&self) -> Vec<String> {
        let now = Instant::now();
        self.nodes
            .iter()
            .filter(|n| n.breaker.is_open(now))
            .map(|n| n.base.to_string())
            .collect()
    }

    /// Every address with its breaker's state, in the configured order.
    pub(crate) fn breakers(&self) -> Vec<crate::upstream::AddressState> {
        let now = Instant::now();
        self.nodes
            .iter()
            .map(|n| crate::upstream::AddressState {
                address: n.base.as_str().trim_end_matches('/').to_owned(),
                breaker: n.breaker.state(now),
            })
            .collect()
    }

    /// Sends `method /v1/{api_path}` with an optional token header and JSON body.
    pub(crate) async fn send(
        &self,
        method: Method,
        api_path: &str,
        token: Option<&HeaderValue>,
        body: Option<&[u8]>,
        idempotency: Idempotency,
    ) -> Result<Reply, Error> {
        let n = self.nodes.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last: Option<Error> = None;
        for i in 0..n {
            let index = (start + i) % n;
            let node = &self.nodes[index];
            if !node.breaker.allows(Instant::now()) {
                continue;
            }
            let url = node
                .base
                .join(&format!("v1/{api_path}"))
                .map_err(|_| Error::Invalid {
                    upstream: self.upstream.clone(),
                    what: format!("request path {api_path}"),
                    reason: "not a valid URL path".to_owned(),
                })?;
            let mut request = self.client.request(method.clone(), url);
            if let Some(token) = token {
                request = request.header(TOKEN_HEADER, token.clone());
            }
            if let Some(ns) = &self.namespace {
                request = request.header(NAMESPACE_HEADER, ns.clone());
            }
            if let Some(body) = body {
                request = request
                    // A PATCH body is a JSON merge patch (RFC 7396): what KV v2 takes.
                    .header(
                        CONTENT_TYPE,
                        if method == Method::PATCH {
                            "application/merge-patch+json"
                        } else {
                            "application/json"
                        },
                    )
                    .body(body.to_vec());
            }
            let address = node.base.as_str().trim_end_matches('/').to_owned();
            match request.send().await {
                Err(e) => {
                    self.failed(node, &address);
                    let connected = !e.is_connect();
                    tracing::debug!(upstream = %self.upstream, %address, error = %e, "request failed");
                    last = Some(Error::Unavailable {
                        upstream: self.upstream.clone(),
                        address,
                        source: Box::new(e),
                    });
                    if idempotency == Idempotency::Unsafe && connected {
                        break;
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    if is_server_failure(status) {
                        self.failed(node, &address);
                        tracing::debug!(upstream = %self.upstream, %address, %status, "server failure");
                        last = Some(Error::Unavailable {
                            upstream: self.upstream.clone(),
                            address,
                            source: Box::new(Reason(format!("server answered {status}"))),
                        });
                        if idempotency == Idempotency::Unsafe {
                            break;
                        }
                        continue;
                    }
                    match response.bytes().await {
                        Ok(body) => {
                            if node.breaker.record_success() {
                                tracing::info!(upstream = %self.upstream, %address, "address answers again: circuit breaker closed");
                            }
                            self.preferred.store(index, Ordering::Relaxed);
                            return Ok(Reply { status, body });
                        }
                        Err(e) => {
                            self.failed(node, &address);
                            last = Some(Error::Unavailable {
                                upstream: self.upstream.clone(),
                                address,
                                source: Box::new(e),
                            });
                            if idempotency == Idempotency::Unsafe {
                                break;
                            }
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Unavailable {
            upstream: self.upstream.clone(),
            address: "all addresses".to_owned(),
            source: Box::new(Reason("circuit open on every address".to_owned())),
        }))
    }
}

fn is_server_failure(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_failures_are_5xx_and_429_but_not_501() {
        assert!(is_server_failure(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_server_failure(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_server_failure(StatusCode::NOT_IMPLEMENTED));
        assert!(!is_server_failure(StatusCode::NOT_FOUND));
        assert!(!is_server_failure(StatusCode::FORBIDDEN));
    }

    #[test]
    fn refuses_addresses_that_are_not_http_urls() {
        let client = crate::upstream::http::client("bao", &Default::default()).expect("client");
        for bad in ["127.0.0.1:8200", "ftp://host", "not a url"] {
            assert!(
                Transport::new(
                    "bao",
                    client.clone(),
                    &[bad.to_owned()],
                    None,
                    BreakerSettings::default()
                )
                .is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(Transport::new("bao", client, &[], None, BreakerSettings::default()).is_err());
    }
}
