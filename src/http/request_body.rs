//! Reading request bodies within their bounds: each at most `http.max_body_bytes` (413), all
//! together at most `http.body_budget_bytes` being read or parsed at once ([`BodyBudget`]: beyond
//! it 503 with `Retry-After`), each within [`BODY_TIMEOUT`] (408); and parsing a big body off the
//! async workers ([`Body::parse`]).
//!
//! Invariants:
//! - The budget counts the bytes a body has actually delivered, as they arrive, so a client
//!   that announces a large `Content-Length` and sends nothing holds nothing; a body's share is
//!   held until its [`Body`] is dropped, i.e. through its parse. What is held is
//!   `flagrelay_http_body_bytes`; each refusal counts in `flagrelay_http_body_budget_rejections_total`.
//! - A refusal is immediate (no waiting for budget): the client is told to come back.
//! - Bodies over [`OFFLOAD_BYTES`] are parsed on the blocking pool, so a burst of large bodies
//!   cannot stall the runtime that also serves `/healthz` and the streams.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::metrics::Metrics;

/// How long a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bodies longer than this are parsed on the blocking pool.
pub const OFFLOAD_BYTES: usize = 64 * 1024;

/// The bytes of request bodies being read or parsed at once, over all requests.
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    held: IntGauge,
    rejected: IntCounter,
}

/// A body's share of the budget, given back when dropped.
struct Share {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    held: IntGauge,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.held.sub(self.bytes as i64);
    }
}

impl BodyBudget {
    /// A budget of `bytes`, counted in `metrics`.
    pub fn new(bytes: usize, metrics: &Metrics) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            held: metrics.http_body_bytes.clone(),
            rejected: metrics.http_body_budget_rejections.clone(),
        }
    }

    /// Bytes of the budget free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    fn share(&self) -> Share {
        Share { permit: None, bytes: 0, held: self.held.clone() }
    }

    /// Adds `n` bytes to `share`, or refuses (503) when the budget has not that many left.
    fn grow(&self, share: &mut Share, n: usize) -> Result<(), ApiError> {
        let Ok(n32) = u32::try_from(n) else { return Err(self.refuse()) };
        let more = self.permits.clone().try_acquire_many_owned(n32).map_err(|_| self.refuse())?;
        match &mut share.permit {
            Some(p) => p.merge(more),
            None => share.permit = Some(more),
        }
        share.bytes += n;
        self.held.add(n as i64);
        Ok(())
    }

    fn refuse(&self) -> ApiError {
        self.rejected.inc();
        ApiError::Busy
    }
}

/// A request body read within its bounds, holding its share of the budget until dropped.
pub struct Body {
    pub bytes: Bytes,
    _share: Share,
}

impl Body {
    /// Runs `parse` on the bytes: here for a small body, on the blocking pool for one over
    /// [`OFFLOAD_BYTES`]; the body (and its share) comes back with the result.
    pub async fn parse<T: Send + 'static>(self, parse: impl FnOnce(&[u8]) -> T + Send + 'static) -> Result<(T, Body), ApiError> {
        if self.bytes.len() <= OFFLOAD_BYTES {
            let t = parse(&self.bytes);
            return Ok((t, self));
        }
        // A join error means the runtime is shutting down (`parse` does not panic on any input).
        tokio::task::spawn_blocking(move || (parse(&self.bytes), self)).await.map_err(|_| ApiError::Busy)
    }
}

/// Reads a request body of at most `limit` bytes within `budget` (see the module docs).
pub async fn read(body: Incoming, headers: &HeaderMap, limit: usize, budget: &BodyBudget) -> Result<Body, ApiError> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    let mut share = budget.share();
    let read = async {
        let mut body = std::pin::pin!(Limited::new(body, limit));
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                }
            })?;
            if let Ok(data) = frame.into_data() {
                budget.grow(&mut share, data.len())?;
                buf.extend_from_slice(&data);
            }
        }
        Ok::<Bytes, ApiError>(buf.freeze())
    };
    // A client that trickles its body (slow loris) must not hold the connection, or a drain.
    let bytes = tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| ApiError::BodyTimeout)??;
    Ok(Body { bytes, _share: share })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: usize) -> (BodyBudget, Arc<Metrics>) {
        let m = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
        (BodyBudget::new(bytes, &m), m)
    }

    #[test]
    fn the_budget_refuses_beyond_its_bytes_and_counts_what_is_held() {
        let (b, m) = budget(100);
        let mut one = b.share();
        b.grow(&mut one, 60).expect("60 of 100");
        let mut two = b.share();
        b.grow(&mut two, 30).expect("90 of 100");
        assert!(matches!(b.grow(&mut two, 11), Err(ApiError::Busy)), "101 of 100");
        assert_eq!((m.http_body_bytes.get(), m.http_body_budget_rejections.get()), (90, 1));
        drop(one);
        assert_eq!((b.available(), m.http_body_bytes.get()), (70, 30), "a dropped body gives its share back");
        b.grow(&mut two, 70).expect("100 of 100");
        drop(two);
        assert_eq!((b.available(), m.http_body_bytes.get()), (100, 0));
    }

    #[tokio::test]
    async fn a_big_body_is_parsed_on_the_blocking_pool_and_a_small_one_in_place() {
        let (b, _) = budget(1 << 20);
        // The test runtime has one thread: a parse elsewhere ran on the blocking pool.
        let here = std::thread::current().id();
        for (len, offloaded) in [(OFFLOAD_BYTES, false), (OFFLOAD_BYTES + 1, true)] {
            let mut share = b.share();
            b.grow(&mut share, len).expect("within the budget");
            let body = Body { bytes: Bytes::from(vec![b' '; len]), _share: share };
            let ((n, elsewhere), body) = body.parse(move |bytes| (bytes.len(), std::thread::current().id() != here)).await.expect("parsed");
            assert_eq!((n, elsewhere), (len, offloaded), "{len} bytes");
            assert_eq!(b.available(), (1 << 20) - len, "the share is held through the parse");
            drop(body);
        }
        assert_eq!(b.available(), 1 << 20);
    }
}
