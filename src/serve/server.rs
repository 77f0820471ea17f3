//! The HTTP/1 connection loop under the router: hyper driven directly (rather than through
//! `axum::serve`) for what a server facing broken or hostile clients needs: a time limit on
//! receiving a request's headers, a cap on their size (431), a count of open connections for
//! `/metrics`, and a shutdown that finishes the requests that arrived but drops connections
//! that never completed a request's headers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use super::state::AppState;

/// Limits on what a client may send before the router sees a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// Time to receive a request's headers; also how long an idle keep-alive connection stays
    /// open waiting for its next request.
    pub(crate) header_read_timeout: Duration,
    /// Largest request line plus headers, in bytes (over it: 431 from hyper).
    pub(crate) max_header_bytes: usize,
}

/// Counts live tasks and wakes a waiter when none are left.
#[derive(Default)]
struct Tracker {
    count: AtomicUsize,
    none_left: Notify,
}

struct TrackerGuard(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        TrackerGuard(Arc::clone(self))
    }

    async fn wait_none_left(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// Accepts connections until `stop` turns true, then waits for the connections that are
/// finishing a request (each answers and closes) for at most `grace`. Connections that never
/// completed a request's headers are dropped at once.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    state: AppState,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let connections = Arc::new(Tracker::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let guard = connections.enter();
                    let task = serve_one(stream, app.clone(), state.clone(), limits, stop.clone());
                    tokio::spawn(async move {
                        task.await;
                        drop(guard);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, connections.wait_none_left())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests did not finish in time; exiting anyway"
        );
    }
}

/// Marks the connection once hyper has parsed a request's headers and calls the router.
struct MarkDispatched<S> {
    inner: S,
    dispatched: Arc<AtomicBool>,
}

impl<S: hyper::service::Service<Request<Incoming>>> hyper::service::Service<Request<Incoming>>
    for MarkDispatched<S>
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.dispatched.store(true, Ordering::SeqCst);
        self.inner.call(request)
    }
}

async fn serve_one(
    stream: TcpStream,
    app: Router,
    state: AppState,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let _open = state.metrics().connection_opened();
    let dispatched = Arc::new(AtomicBool::new(false));
    let service = MarkDispatched {
        inner: TowerToHyperService::new(app),
        dispatched: Arc::clone(&dispatched),
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        () = stopped(&mut stop) => {
            // Headers never completed (a client that stopped half-way, or an idle fresh
            // connection): nothing to finish, and hyper would wait for the rest.
            if !dispatched.load(Ordering::SeqCst) {
                return;
            }
            // A request in progress is answered (its body read is cut short by the handler
            // if it is still arriving); an idle keep-alive connection closes now.
            connection.as_mut().graceful_shutdown();
            log_connection_end(connection.await);
        }
    }
}

/// Resolves once the shutdown has begun (at once if it already has).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not across an await.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// A client that vanished or sent garbage is its own problem: debug, not an error.
fn log_connection_end(result: hyper::Result<()>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
