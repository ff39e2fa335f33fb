//! The response body: one buffer, two buffers (a cached part plus a small per-request
//! tail, without copying the cached part), or a stream of chunks (server-sent events).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// Chunks still to send, in order (at most two).
    Parts([Option<Bytes>; 2]),
    /// Chunks from a producer task; ends when the producer drops its sender.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body {
    /// One buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Parts([Some(bytes.into()), None])
    }

    /// Two buffers sent back to back.
    pub fn two(head: Bytes, tail: Bytes) -> Self {
        Body::Parts([Some(head), Some(tail)])
    }

    /// A stream fed through the returned sender.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Body::Stream(rx))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Parts(parts) => {
                for part in parts.iter_mut() {
                    if let Some(bytes) = part.take() {
                        if !bytes.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                    }
                }
                Poll::Ready(None)
            }
            Body::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Parts(parts) => parts.iter().all(|p| p.as_ref().is_none_or(Bytes::is_empty)),
            Body::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Parts(parts) => {
                SizeHint::with_exact(parts.iter().flatten().map(|b| b.len() as u64).sum())
            }
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn two_parts_are_sent_in_order_with_an_exact_length() {
        let body = Body::two(Bytes::from_static(b"{\"a\":1"), Bytes::from_static(b"}"));
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(7));
        let bytes = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&bytes[..], b"{\"a\":1}");
    }
}
