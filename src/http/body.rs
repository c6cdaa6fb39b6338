//! The response body type: a whole buffer, nothing, or an SSE stream pulled by the connection.
//!
//! Invariant: an SSE body hands the connection one shared `Bytes` frame at a time and is only
//! polled when the connection can take more, so nothing queues per client beyond hyper's bounded
//! write buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};

use crate::fanout::SseStream;

pub enum ResBody {
    Empty,
    Full(Option<Bytes>),
    Sse(SseStream),
}

impl ResBody {
    pub fn full(b: impl Into<Bytes>) -> ResBody {
        ResBody::Full(Some(b.into()))
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResBody::Empty => Poll::Ready(None),
            ResBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResBody::Sse(s) => Pin::new(s).poll_next(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Empty => true,
            ResBody::Full(b) => b.is_none(),
            ResBody::Sse(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Empty => SizeHint::with_exact(0),
            ResBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResBody::Full(None) => SizeHint::with_exact(0),
            ResBody::Sse(_) => SizeHint::default(),
        }
    }
}
