//! How the forwarder connects to an upstream: TLS (rustls, the system's
//! trust store; HTTP/2 and HTTP/1.1 offered through ALPN) over TCP, direct
//! or through the HTTP proxy the environment names (`HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as curl and reqwest read them;
//! tunnelled with CONNECT), within a connect timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;

use super::BoxError;

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer, in words without the URL or a header.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub(super) String);

impl SendError {
    pub fn new(what: &str, e: &(dyn std::error::Error + 'static)) -> SendError {
        SendError(format!("{what}: {}", innermost(e)))
    }
}

/// The innermost cause of an error.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}

/// The connector every upstream connection is made with: TLS over a
/// direct or proxied TCP connection.
pub type Https = HttpsConnector<Connector>;

/// Connects straight to an upstream, or through the proxy the environment
/// names for it.
#[derive(Clone)]
pub struct Connector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<<HttpConnector as tower_service::Service<Uri>>::Response, BoxError>,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for Connector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        match self.proxies.intercept(&dst) {
            None => Box::pin(async move { Ok(direct.call(dst).await?) }),
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { Ok(tunnel.call(dst).await?) })
            }
        }
    }
}

/// The connector, offering HTTP/2 and HTTP/1.1 through ALPN or, with
/// `http1_only`, HTTP/1.1 alone.
pub(super) fn connector(http1_only: bool) -> Https {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let tls = <rustls::ClientConfig as rustls_platform_verifier::ConfigVerifierExt>::with_platform_verifier()
        .expect("the system's trust store loads");
    let direct = Connector {
        direct: http,
        proxies: Arc::new(Matcher::from_env()),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if http1_only {
        builder.enable_http1().wrap_connector(direct)
    } else {
        builder.enable_all_versions().wrap_connector(direct)
    }
}
