//! The stream an admitted connection is served over: every write must make
//! progress within a deadline, and the errors hyper answers by itself while
//! parsing a request head get the JSON body every error has (SPEC §2).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose writes must make progress within a deadline: a write
/// (or flush) that stays blocked that long, because the client stopped
/// reading and the socket's buffers are full, fails with `TimedOut`, and
/// hyper then closes the connection. Without it such a client would hold
/// its connection, its place in the budget and the unsent answer forever.
///
/// It also gives a JSON body to the answers hyper writes by itself when a
/// request head does not parse (400, 414, 431, 505: a status line, `connection:
/// close` and `content-length: 0`, nothing else). Every answer of the
/// routes carries a content type, so an error answer without one, and
/// without a body, can only be hyper's; it is replaced as a whole by the
/// same status with `{"error": "..."}` (see `json_error_for`).
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A replacement answer being written: its bytes, how many are out,
    /// and how many bytes of the original it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            blocked: None,
            replacing: None,
        }
    }

    /// Passes a ready result on (and clears the deadline); a pending one
    /// starts the deadline, or fails once it has passed.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client read nothing of the answer for {timeout:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> WriteDeadline<S> {
    /// Writes the replacement of an answer hyper wrote by itself; ready
    /// with the original's length once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        loop {
            let Some((bytes, done, stands_for)) = &self.replacing else {
                return Poll::Ready(Ok(0));
            };
            if *done == bytes.len() {
                let n = *stands_for;
                self.replacing = None;
                return Poll::Ready(Ok(n));
            }
            let polled = Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]);
            match self.watch(cx, polled) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    if let Some((_, done, _)) = &mut self.replacing {
                        *done += n;
                    }
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(answer) = json_error_for(buf)
        {
            self.replacing = Some((answer, 0, buf.len()));
        }
        if self.replacing.is_some() {
            return self.poll_replacement(cx);
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper's own answers are a single head; checked in the first slice.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && (self.replacing.is_some() || json_error_for(first).is_some())
        {
            return self.poll_write(cx, first);
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// The answer to send instead of `head` when `head` is one hyper wrote by
/// itself for a request it could not parse: an error status, `connection:
/// close`, an empty body and no content type (every answer of the routes
/// has one). `None` for anything else.
pub fn json_error_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (head_only, rest) = text.split_once("\r\n\r\n")?;
    if !rest.is_empty() {
        return None;
    }
    let mut lines = head_only.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    if !(400..600).contains(&code) {
        return None;
    }
    let (mut close, mut empty) = (false, false);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => return None,
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "content-length" => empty = value == "0",
            _ => {}
        }
    }
    if !(close && empty) {
        return None;
    }
    let message = match code {
        400 => "the request head is malformed".to_string(),
        408 => "the request head did not arrive in time".to_string(),
        414 => "the request target is too long".to_string(),
        431 => "the request head is too large".to_string(),
        505 => "only HTTP/1.0 and HTTP/1.1 are served".to_string(),
        other => format!("the request could not be read ({other})"),
    };
    let body = serde_json::json!({ "error": message }).to_string();
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_error_answers_are_given_a_json_body() {
        let hyper = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 16:53:41 GMT\r\n\r\n";
        let out = String::from_utf8(json_error_for(hyper).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("too long"));
        for not_hypers in [
            // A route's error: it has a content type and a body.
            &b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            // Success, even when empty.
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            // An error that keeps the connection.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            // Part of a head.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n",
            b"garbage",
        ] {
            assert!(json_error_for(not_hypers).is_none(), "{:?}", String::from_utf8_lossy(not_hypers));
        }
    }

    #[tokio::test]
    async fn a_replaced_answer_is_written_whole_and_counted_as_the_original() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A small pipe: the replacement needs several writes.
        let (near, mut far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5));
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            far.read_to_end(&mut out).await.unwrap();
            out
        });
        let n = w.write(hyper).await.unwrap();
        assert_eq!(n, hyper.len());
        w.shutdown().await.unwrap();
        drop(w);
        let out = String::from_utf8(reader.await.unwrap()).unwrap();
        assert!(
            out.ends_with("{\"error\":\"the request head is malformed\"}"),
            "{out}"
        );
    }
}
