//! A response body that reports its progress as a listed transfer.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};

use crate::transfers::TransferGuard;

/// Wraps a download body; the transfer is listed until this is dropped,
/// which hyper does after the last byte or when the connection goes away.
pub struct TrackedBody<B> {
    inner: B,
    guard: TransferGuard,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, guard: TransferGuard) -> TrackedBody<B> {
        TrackedBody { inner, guard }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            self.guard.add(data.remaining() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfers::{TransferKind, TransferTable};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::Arc;

    #[tokio::test]
    async fn counts_and_unlists() {
        let table = Arc::new(TransferTable::default());
        let guard = table.begin(TransferKind::Download, "f", Some(5));
        let mut body = TrackedBody::new(Full::new(Bytes::from_static(b"hello")), guard);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(table.snapshot()[0].done, 0);
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "hello");
        assert_eq!(table.snapshot()[0].done, 5);
        drop(body);
        assert!(table.snapshot().is_empty());
    }
}
