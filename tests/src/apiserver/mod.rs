//! A small, stateful Kubernetes API server for tests and the local sandbox.
//!
//! It speaks real Kubernetes HTTP (JSON over HTTP/1.1, chunked watch streams) to real clients:
//! kube-rs clients and kube-runtime controllers, and kubectl. It owns the semantics the
//! operator relies on: resource versions, generation, status subresource, get/list/watch with
//! selectors, 410 Gone for expired versions, create/update/patch (JSON, merge, strategic,
//! server-side apply with conflicts), finalizers, ownerReference garbage collection, namespace
//! cascade, CRD registration with schema defaults and CEL validation, and test controls
//! (faults, latency, request log).
//!
//! The I/O boundary is the TCP listener in [`ApiServer::start`]; `store` holds the state
//! transitions, `patch` and `selector` are pure. Approximations are listed in each module's
//! header; the main ones: no authentication or authorization (every request is admin), no
//! admission plugins beyond namespace existence, no pagination (a `limit` returns
//! everything), OpenAPI documents declare operations and parameters but no schemas (enough
//! for kubectl's server-side validation, not for `kubectl explain`), built-in kinds are
//! not schema-checked.

mod http;
mod patch;
mod registry;
mod selector;
mod store;
pub mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use http::{Fault, LoggedRequest};
pub use selector::Selector;

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub addr: SocketAddr,
    /// How many changes to keep for watches; older resource versions get 410 Gone.
    pub history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 10_000,
        }
    }
}

/// A running server. Dropping it stops accepting connections and ends open watches.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(http::Shared {
            state: Mutex::new(store::State::new(config.history)),
            controls: Mutex::new(http::Controls::default()),
        });
        let shutdown = crate::serve::spawn(listener, shared.clone(), http::handle);
        Ok(Self {
            addr,
            shared,
            shutdown,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig document pointing at this server (context `wgnet-standin`, namespace
    /// `default`, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wgnet-standin\n  cluster:\n    server: {url}\n\
             users:\n- name: wgnet-standin\n  user: {{}}\ncontexts:\n- name: wgnet-standin\n  context:\n    \
             cluster: wgnet-standin\n    user: wgnet-standin\n    namespace: default\n\
             current-context: wgnet-standin\n",
            url = self.url()
        )
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to a file.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Fails the next `count` requests with `method` (any if `None`) whose path contains
    /// `path_contains`, answering `status` with a `Status` body.
    pub fn fail_next(&self, method: Option<&str>, path_contains: &str, count: usize, status: u16) {
        self.controls().faults.push(Fault {
            method: method.map(str::to_owned),
            path_contains: path_contains.to_owned(),
            remaining: count,
            status,
        });
    }

    /// Delays every response by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.controls().latency = latency;
    }

    /// Every request served so far.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.controls().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_request_log(&self) {
        self.controls().log.clear();
    }

    /// The current resource version of the store.
    pub fn resource_version(&self) -> u64 {
        self.state().rv()
    }

    fn controls(&self) -> std::sync::MutexGuard<'_, http::Controls> {
        self.shared
            .controls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, store::State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
