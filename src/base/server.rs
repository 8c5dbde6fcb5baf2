//! What the socket API and the forwarder share: HTTP/1.1 connections with
//! a head timeout, watched so that shutdown can wait for them.

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::wire::proto::{ErrorBody, ErrorCode};

/// Limits that keep one client from holding a server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed to send a request's head, and then its body.
    pub request_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub grace: Duration,
}

/// The open connections of one server.
pub struct Connections {
    tracker: TaskTracker,
    stop: CancellationToken,
    limits: Limits,
    name: &'static str,
}

type BoxError = Box<dyn Error + Send + Sync>;

impl Connections {
    pub fn new(limits: Limits, name: &'static str) -> Connections {
        Connections {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            limits,
            name,
        }
    }

    /// Serves `io` with `service` on a task of its own until the connection
    /// ends; `guard` is dropped then. A connection the service
    /// upgrades (a WebSocket) leaves hyper, and this watch, once the upgrade
    /// is done.
    pub fn serve<I, S, B>(&self, io: I, service: S, guard: impl Send + 'static)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.request_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let name = self.name;
        let open = Open::count();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("{name} connection ended: {e}");
            }
            drop(guard);
            drop(open);
        });
    }

    /// Asks every connection to finish its request in flight and waits for
    /// them, at most the grace period.
    pub async fn shutdown(self) {
        let grace = self.limits.grace;
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} requests still in flight after {grace:?}; closing them",
                self.name
            );
        }
    }
}

/// Connections open across the servers, and the most open since memory
/// was last handed back to the system.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Bursts smaller than this are not worth a trim.
const TRIM_PEAK: usize = 512;

/// One open connection, counted until dropped. When a burst of connections
/// is over (a quarter of its peak left), the allocator is asked to return
/// the memory they held: glibc's malloc keeps freed memory otherwise, so
/// that thousands of idle connections would leave the daemon large for
/// good.
struct Open;

impl Open {
    fn count() -> Open {
        let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(open, Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let open = OPEN.fetch_sub(1, Ordering::Relaxed) - 1;
        let peak = PEAK.load(Ordering::Relaxed);
        if peak >= TRIM_PEAK
            && open <= peak / 4
            && PEAK
                .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // A walk of the whole heap: not on a runtime worker.
            runtime.spawn_blocking(release_free_memory);
        }
    }
}

/// Hands freed heap memory back to the system, where the allocator keeps it.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)] // The one call into C outside a crate: glibc's malloc_trim.
    {
        // SAFETY: malloc_trim takes no pointer and only walks the
        // allocator's own free lists, under the allocator's lock.
        let released = unsafe { nix::libc::malloc_trim(0) };
        tracing::debug!(
            released,
            "returned freed memory after a burst of connections"
        );
    }
}

/// Answers a connection from a user who may not use the server with 403
/// (after reading the request head, so that an HTTP client sees the answer)
/// and closes it.
pub async fn refuse<S>(mut stream: S, message: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let body = ErrorBody::new(ErrorCode::Forbidden, message).to_vec();
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}
