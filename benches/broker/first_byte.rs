//! A fresh client's first byte against a TLS upstream one emulated round
//! trip away, straight and through the forwarder: right after another
//! request, and after an idle time longer than the one after which the
//! upstream closes idle connections.
//!
//! The kernel here has no netem, so a relay between the clients and the
//! upstream delays each direction by half the round trip, and the first
//! bytes of a connection by one more round trip (the TCP handshake).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The emulated round trip between this machine and the upstream.
pub const RTT: Duration = Duration::from_millis(20);

/// What a run of this part needs from the benchmark.
pub struct Setting {
    /// The upstream closes connections idle this long.
    pub idle_close: Duration,
    /// The pause before the after-idle case.
    pub idle: Duration,
    /// Samples of the after-a-request case.
    pub samples: usize,
}

impl Setting {
    pub fn new(quick: bool) -> Setting {
        if quick {
            Setting {
                idle_close: Duration::from_secs(2),
                idle: Duration::from_secs(3),
                samples: 2,
            }
        } else {
            Setting {
                idle_close: Duration::from_secs(60),
                idle: Duration::from_secs(100),
                samples: 7,
            }
        }
    }
}

/// The TLS upstream behind its relay: the address clients dial, and the
/// PEM of the certificate they must trust.
pub struct Upstream {
    pub addr: SocketAddr,
    pub cert_pem: String,
    roots: Arc<rustls::RootCertStore>,
}

/// Starts the upstream (on a thread of its own) and its relay.
pub fn start(idle_close: Duration) -> Upstream {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_der = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (upstream_addr, addr) = (upstream.local_addr().unwrap(), relay.local_addr().unwrap());
    for listener in [&upstream, &relay] {
        listener.set_nonblocking(true).unwrap();
    }
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let relay = TcpListener::from_std(relay).unwrap();
            tokio::spawn(relay_loop(relay, upstream_addr));
            let upstream = TcpListener::from_std(upstream).unwrap();
            loop {
                let (stream, _) = upstream.accept().await.unwrap();
                tokio::spawn(serve_tls(stream, tls.clone(), idle_close));
            }
        });
    });
    Upstream {
        addr,
        cert_pem: certified.cert.pem(),
        roots: Arc::new(roots),
    }
}

/// One TLS connection, HTTP/2 or HTTP/1.1 as ALPN chose, closed once it
/// carried no request for `idle_close`.
async fn serve_tls(stream: TcpStream, tls: tokio_rustls::TlsAcceptor, idle_close: Duration) {
    let _ = stream.set_nodelay(true);
    let Ok(stream) = tls.accept(stream).await else {
        return;
    };
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let seen = last.clone();
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        seen.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        let body = Full::new(Bytes::from_static(
            b"data: {\"type\":\"response.created\"}\n\n",
        ));
        std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(body)))
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        let idle_since = Duration::from_millis(last.load(Ordering::SeqCst));
        let deadline = tokio::time::Instant::from_std(started + idle_since + idle_close);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep_until(deadline) => {
                if Duration::from_millis(last.load(Ordering::SeqCst)) == idle_since {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    return;
                }
            }
        }
    }
}

async fn relay_loop(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let (client, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let accepted = tokio::time::Instant::now();
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // The client's first bytes wait for the emulated handshake.
            let handshake = accepted + RTT;
            tokio::join!(
                delayed(client_read, server_write, handshake),
                delayed(server_read, client_write, accepted),
            );
        });
    }
}

/// Copies `from` to `to`, each chunk half a round trip after it was read
/// (and not before `not_before`), in order; the end too.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    not_before: tokio::time::Instant,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let at = tokio::time::Instant::now().max(not_before) + RTT / 2;
            if tx.send((at, buf[..n].to_vec())).is_err() || n == 0 {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if bytes.is_empty() || to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Time to the first body byte of one request on a new connection.
async fn first_byte<S>(io: S, request: Request<Full<Bytes>>, started: Instant) -> Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut response = sender.send_request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.body_mut().frame().await.unwrap().unwrap();
    started.elapsed()
}

/// A fresh client straight to the upstream: TCP, TLS, then the request.
pub async fn direct(upstream: &Upstream) -> Duration {
    let started = Instant::now();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(upstream.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(upstream.addr).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let request = Request::post("/backend-api/codex/responses")
        .header("host", upstream.addr.to_string())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    first_byte(tls, request, started).await
}

/// A fresh client through the forwarder at `forwarder`.
pub async fn forwarded(forwarder: SocketAddr) -> Duration {
    let started = Instant::now();
    let tcp = TcpStream::connect(forwarder).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let request = Request::post("/codex/responses")
        .header("host", forwarder.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    first_byte(tcp, request, started).await
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn row(case: &str, fwd: Duration, direct: Duration) {
    println!(
        "  {case:<22} | {:>8.1} ms | {:>8.1} ms | {:>10.2}",
        fwd.as_secs_f64() * 1e3,
        direct.as_secs_f64() * 1e3,
        fwd.as_secs_f64() / direct.as_secs_f64()
    );
}

/// Measures both cases and prints the table.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    upstream: &Upstream,
    forwarder: SocketAddr,
    setting: &Setting,
) {
    println!(
        "First byte of a fresh client, TLS upstream {} ms away (emulated), closing connections \
         idle {} s:",
        RTT.as_millis(),
        setting.idle_close.as_secs()
    );
    println!(
        "  {:<22} | {:>11} | {:>11} | {:>10}",
        "case", "forwarder", "direct", "fwd/direct"
    );
    runtime.block_on(async {
        forwarded(forwarder).await;
        let mut fwd = Vec::new();
        let mut direct_times = Vec::new();
        for _ in 0..setting.samples {
            fwd.push(forwarded(forwarder).await);
            direct_times.push(direct(upstream).await);
        }
        row("after another request", median(fwd), median(direct_times));
        tokio::time::sleep(setting.idle).await;
        let fwd = forwarded(forwarder).await;
        let direct_time = direct(upstream).await;
        row(
            &format!("after {} s idle", setting.idle.as_secs()),
            fwd,
            direct_time,
        );
    });
}
