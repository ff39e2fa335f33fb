//! An API client for tests: the agent's own [`latchkey::client::Client`] (one
//! keep-alive mTLS connection), with a deadline on every request and answers read
//! as text and JSON.

use std::time::Duration;

use anyhow::Context as _;
use http::Method;
use latchkey::client::{encode_query_value, Client};
use latchkey::secret::SecretBytes;
use serde_json::{json, Value};

/// The longest a single request may take before the test fails (scaled by the pace).
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);

/// One answer from the agent.
#[derive(Debug)]
pub(crate) struct Answer {
    /// HTTP status.
    pub(crate) status: u16,
    /// The body as text (test values only; fine to print).
    pub(crate) body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code`, when the answer is an error.
    pub(crate) fn code(&self) -> Option<String> {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `fields.<name>` of a secret read.
    pub(crate) fn field(&self, name: &str) -> Option<String> {
        self.json()
            .pointer(&format!("/fields/{name}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `version` of a secret read or write.
    pub(crate) fn version(&self) -> Option<u64> {
        self.json().get("version").and_then(Value::as_u64)
    }

    /// The paths of a list answer, in the order given.
    pub(crate) fn paths(&self) -> Vec<String> {
        self.json()
            .get("secrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("path").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}

/// A client holding one identity's certificate.
pub(crate) struct Api {
    client: Client,
}

impl Api {
    pub(crate) fn new(client: Client) -> Self {
        Api { client }
    }

    /// Any request; `uri` is a path and query such as `/v1/secrets/a?version=1`.
    pub(crate) async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let what = format!("{method} {uri} to {}", self.client.endpoint());
        let reply = super::within(
            &format!("an answer to {what}"),
            REQUEST_DEADLINE,
            self.client.request(method, uri, body.map(SecretBytes::new)),
        )
        .await?
        .with_context(|| what.clone())?;
        Ok(Answer {
            status: reply.status,
            body: String::from_utf8_lossy(reply.body.expose()).into_owned(),
        })
    }

    /// `GET uri`.
    pub(crate) async fn get(&self, uri: &str) -> anyhow::Result<Answer> {
        self.request(Method::GET, uri, None).await
    }

    /// `GET /v1/health`.
    pub(crate) async fn health(&self) -> anyhow::Result<Answer> {
        self.get("/v1/health").await
    }

    /// `GET /v1/secrets/{path}` (current version).
    pub(crate) async fn read(&self, path: &str) -> anyhow::Result<Answer> {
        self.get(&format!("/v1/secrets/{path}")).await
    }

    /// `PUT /v1/secrets/{path}` with `{"fields": fields}`.
    pub(crate) async fn write(&self, path: &str, fields: Value) -> anyhow::Result<Answer> {
        self.put(path, json!({ "fields": fields })).await
    }

    /// `PUT /v1/secrets/{path}` with a whole JSON body.
    pub(crate) async fn put(&self, path: &str, body: Value) -> anyhow::Result<Answer> {
        let bytes = serde_json::to_vec(&body)?;
        self.request(Method::PUT, &format!("/v1/secrets/{path}"), Some(bytes))
            .await
    }

    /// `DELETE /v1/secrets/{path}`.
    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.request(Method::DELETE, &format!("/v1/secrets/{path}"), None)
            .await
    }

    /// `GET /v1/secrets?prefix=...`.
    pub(crate) async fn list(&self, prefix: &str) -> anyhow::Result<Answer> {
        self.get(&format!(
            "/v1/secrets?prefix={}",
            encode_query_value(prefix)
        ))
        .await
    }
}
