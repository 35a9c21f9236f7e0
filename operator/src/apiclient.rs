//! The operator's API server client: kube's own layers (base URL, credentials, extra
//! headers) over a connection pool that speaks HTTP/2 when the server offers it.
//!
//! kube's default client speaks HTTP/1.1 only, so every request in flight holds a TLS
//! connection of its own: 128 passes at once kept about 150 connections to the API server
//! open, each with its TLS state, read and write buffers. Over HTTP/2 they share one. The
//! operator never upgrades a connection (no exec, attach or port-forward), which is what
//! keeps kube's own client on HTTP/1.1.
//!
//! I/O: none until the client is used; [`client`] reads the kubeconfig or the in-cluster
//! service account.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt as _;
use kube::client::retry::RetryPolicy;
use tower::ServiceBuilder;

/// How often an idle connection is pinged, and how long an answer may take: a connection
/// that died without a word (a restarted control-plane node, a dropped NAT entry) is
/// noticed in under a minute instead of leaving every watch on it silent.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No kubeconfig and no in-cluster service account.
    #[error("cannot find the API server's address and credentials: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The TLS settings or credentials of the configuration are unusable.
    #[error("cannot use the API server's TLS settings or credentials: {0}")]
    Kube(#[from] kube::Error),
    /// `tls-server-name` is not a valid DNS name or IP address.
    #[error("tls-server-name in the kubeconfig is not a valid DNS name or IP address")]
    ServerName,
}

/// A client from the kubeconfig or the in-cluster service account (as
/// `kube::Client::try_default`), over HTTP/2 where the server offers it.
pub async fn client() -> Result<kube::Client, ClientError> {
    build(kube::Config::infer().await?)
}

/// A client for `config`, over HTTP/2 where the server offers it (ALPN), HTTP/1.1 otherwise.
pub fn build(config: kube::Config) -> Result<kube::Client, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    // Also for a server that answers HTTP/1.1 only, where no ping runs.
    http.set_keepalive(Some(KEEP_ALIVE));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    let tls = match &config.tls_server_name {
        Some(name) => tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            name.clone()
                .try_into()
                .map_err(|_| ClientError::ServerName)?,
        )),
        None => tls,
    };
    let connector = tls.enable_all_versions().wrap_connector(http);
    let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        // kube's own retries of 429, 503 and 504, as its default client has them.
        .option_layer(
            config
                .default_retry
                .then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(pool);
    Ok(kube::client::ClientBuilder::new(service, config.default_namespace).build())
}
