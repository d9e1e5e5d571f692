//! A read-ahead wrapper for a connection's socket.
//!
//! tungstenite reads at most its read-buffer size per syscall, and we keep that buffer at
//! 256 bytes so an idle connection costs little memory. That would also make a 16 MiB
//! message cost 65,536 syscalls. This wrapper reads up to 64 KiB per syscall into a stack buffer,
//! hands the caller what fits, and keeps the rest on the heap only until it is consumed, so
//! an idle connection still holds no extra buffer.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ws::unfinished::Watcher;

/// Bytes read per syscall at most.
const READ_AHEAD: usize = 64 << 10;

/// An `AsyncRead + AsyncWrite` that reads ahead in large chunks (see the module docs).
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read but not yet handed out; empty (no allocation) between bursts.
    leftover: Vec<u8>,
    pos: usize,
    /// Follows the bytes handed out, to bound unfinished messages.
    watcher: Option<Watcher>,
}

impl<S> ReadAhead<S> {
    /// Wraps a socket.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            leftover: Vec::new(),
            pos: 0,
            watcher: None,
        }
    }

    /// Wraps a socket whose incoming messages `watcher` accounts for.
    pub fn watched(inner: S, watcher: Watcher) -> Self {
        ReadAhead {
            watcher: Some(watcher),
            ..ReadAhead::new(inner)
        }
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    fn read_ahead(&mut self, cx: &mut Context<'_>, dst: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if this.pos < this.leftover.len() {
            let n = dst.remaining().min(this.leftover.len() - this.pos);
            dst.put_slice(&this.leftover[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.leftover.len() {
                this.leftover = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if dst.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, dst);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                let n = dst.remaining().min(got.len());
                dst.put_slice(&got[..n]);
                if n < got.len() {
                    this.leftover = got[n..].to_vec();
                    this.pos = 0;
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = dst.filled().len();
        let result = this.read_ahead(cx, dst);
        if let (Poll::Ready(Ok(())), Some(w)) = (&result, this.watcher.as_mut()) {
            w.observe(&dst.filled()[before..])?;
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut r = ReadAhead::new(&data[..]);
        let mut out = Vec::new();
        let mut small = [0u8; 1024];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(out, data);
        assert!(r.leftover.capacity() == 0, "no buffer kept once drained");
    }
}
