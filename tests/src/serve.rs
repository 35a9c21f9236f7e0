//! The accept loop the test servers share: HTTP/1 connections served by a handler until the
//! returned sender says stop, then shut down gracefully. Each request carries the number
//! of the connection it came on ([`Connection`], in its extensions), so that a server can
//! tell which requests a client sent over the same connection.
//!
//! I/O boundary: the listener handed in.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Which accepted connection a request came on: 1 for the first, counting up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection(pub u64);

/// Serves `listener` with `handler(state, request)` on the current runtime; sending `true`
/// (or dropping the sender) stops accepting and drains open connections.
pub fn spawn<S, F, Fut, E>(listener: TcpListener, state: Arc<S>, handler: F) -> watch::Sender<bool>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<BoxBody<Bytes, std::convert::Infallible>>, E>>
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let (shutdown, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        let mut accepted = 0u64;
        loop {
            let conn = tokio::select! {
                conn = listener.accept() => conn,
                _ = stop.changed() => return,
            };
            let Ok((stream, _)) = conn else { continue };
            accepted += 1;
            let connection = Connection(accepted);
            let state = state.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(connection);
                    handler(state.clone(), req)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.changed() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
    });
    shutdown
}
