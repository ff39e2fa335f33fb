//! Reading a request body: bounded by `max_body_bytes` and `body_timeout`, JSON
//! only, into one zeroizing buffer sized up front (a reallocation would leave a copy
//! of the values behind that nothing zeroizes).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::error::Code;
use super::{ApiError, State};
use crate::secret::SecretBytes;

/// The most of an oversized body read and thrown away before answering 413, so a
/// client still sending sees the answer instead of a reset connection.
const DRAIN_LIMIT: u64 = 1024 * 1024;

async fn drain<B>(body: B, timeout: Duration)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drained = Limited::new(body, DRAIN_LIMIT as usize).collect();
    let _ = tokio::time::timeout(timeout, drained).await;
}

/// The whole body of `req`: 413 past the limit, 415 unless JSON, 408 when it does
/// not arrive in time.
pub(super) async fn read<B>(state: &State, req: Request<B>) -> Result<SecretBytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limit as u64 {
            if len <= DRAIN_LIMIT {
                drain(req.into_body(), state.body_timeout).await;
            }
            return Err(ApiError::too_large(limit));
        }
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::UnsupportedMediaType,
                "send the body as application/json",
            ));
        }
    }
    let capacity = declared.unwrap_or(limit as u64).min(limit as u64) as usize;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(capacity));
    let mut body = std::pin::pin!(req.into_body());
    let mut seen: u64 = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > limit as u64 || bytes.len() + data.len() > capacity {
                // Keep reading (up to a bound) so the client sees the 413.
                if seen > DRAIN_LIMIT {
                    break;
                }
                continue;
            }
            bytes.extend_from_slice(&data);
        }
        Ok::<(), ApiError>(())
    };
    let outcome = tokio::time::timeout(state.body_timeout, read).await;
    let bytes = SecretBytes::from(bytes);
    match outcome {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Code::BodyTimeout,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) if seen > limit as u64 => Err(ApiError::too_large(limit)),
        Ok(Ok(())) => Ok(bytes),
    }
}
