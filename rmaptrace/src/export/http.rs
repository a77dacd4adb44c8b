//! The HTTP side of `rmaptrace serve`: `GET /metrics` on a listening socket,
//! answered on the session's own (single-threaded) runtime. Each connection
//! is a task that reads one request head and asks the session loop for the
//! exposition through a channel: the trace model never leaves the loop, and a
//! slow or silent client costs the loop nothing (its task times out alone).
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// One scrape waiting for its body.
pub type Scrape = oneshot::Sender<String>;

/// A request head larger than this is refused.
const MAX_HEAD: usize = 8192;
/// A client gets this long to send its request and read the answer.
const CLIENT_TIME: Duration = Duration::from_secs(10);
/// Connections answered at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// Starts answering on `listener` (bound before anything was loaded, so a
/// taken port fails first). Must run inside the session's runtime.
pub fn serve(listener: std::net::TcpListener) -> std::io::Result<mpsc::Receiver<Scrape>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let (tx, rx) = mpsc::channel(8);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was
                    // taken: the listener itself is fine.
                    log::debug!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(CLIENT_TIME, answer(stream, tx)).await;
            });
        }
    });
    Ok(rx)
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(b"");
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with(b"HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
    match path {
        b"/metrics" => Route::Metrics { head_only },
        b"/" => Route::Index,
        _ => Route::NotFound,
    }
}

async fn answer(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                431,
                "text/plain",
                b"request head too large\n",
                false,
            )
            .await;
        }
    }
    match route(&head) {
        Route::Metrics { head_only } => {
            let (tx, rx) = oneshot::channel();
            if scrapes.send(tx).await.is_err() {
                return respond(
                    &mut stream,
                    503,
                    "text/plain",
                    b"rmaptrace is stopping\n",
                    false,
                )
                .await;
            }
            match rx.await {
                Ok(body) => {
                    respond(
                        &mut stream,
                        200,
                        super::prometheus::CONTENT_TYPE,
                        body.as_bytes(),
                        head_only,
                    )
                    .await
                }
                Err(_) => {
                    respond(
                        &mut stream,
                        503,
                        "text/plain",
                        b"rmaptrace is stopping\n",
                        false,
                    )
                    .await
                }
            }
        }
        Route::Index => {
            let body = b"rmaptrace: page fault metrics at /metrics\n";
            respond(&mut stream, 200, "text/plain; charset=utf-8", body, false).await
        }
        Route::NotFound => {
            respond(
                &mut stream,
                404,
                "text/plain",
                b"not found: try /metrics\n",
                false,
            )
            .await
        }
        Route::MethodNotAllowed => {
            respond(
                &mut stream,
                405,
                "text/plain",
                b"only GET and HEAD\n",
                false,
            )
            .await
        }
        Route::BadRequest => respond(&mut stream, 400, "text/plain", b"bad request\n", false).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status == 405 { "Allow: GET, HEAD\r\n" } else { "" }
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route(b"GET /etc/passwd HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"garbage"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }
}
