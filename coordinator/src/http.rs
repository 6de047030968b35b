//! The daemon's HTTP endpoint (`daemon.listen`): `GET /metrics` (Prometheus text
//! format 0.0.4, see [`crate::metrics`]) and `GET /health`; anything else is 404.
//!
//! Nothing runs between requests: a scrape or a health check reads the primary (and
//! the replicas) when it is asked, so an idle daemon costs no CPU here. The config is
//! read from a `watch` channel at each request, so a reload shows at the next scrape.
//!
//! Built for clients that misbehave (anyone who can reach the port):
//! - at most [`MAX_CONNECTIONS`] connections at once; one more is closed at once, so
//!   a flood of idle connections cannot use up the daemon's file descriptors;
//! - a client has [`HEADER_TIMEOUT`] to send its request, a connection serves one
//!   request (no keep-alive) and lives at most [`CONNECTION_LIMIT`];
//! - one gathering at a time for `/metrics`, and one for `/health`: concurrent
//!   requests wait for it and share its result, which is reused for [`REUSE`]. So a
//!   flood of scrapes holds at most one session on the primary and one per replica
//!   for metrics, plus one for health, whatever its size;
//! - an accept error (out of file descriptors) backs off, it never ends the daemon.
//!
//! The port is bound when the daemon starts ([`bind`]), so an address in use is a
//! config error (exit 2) before any work, not a failure later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error_text::OneLine;
use crate::metrics;
use crate::UsageError;

/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long `/health` waits for the primary (connection and `SELECT 1`).
const HEALTH_PATIENCE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may live, its request answered or not.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(20);
/// How long the result of a gathering is served to further requests.
pub const REUSE: Duration = Duration::from_secs(1);

/// Bind `daemon.listen`. An address in use, or one this host does not have, is the
/// operator's to fix: a [`UsageError`] naming the field.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, UsageError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        UsageError(match e.kind() {
            std::io::ErrorKind::AddrInUse => format!("daemon.listen: {addr} is already in use"),
            _ => format!("daemon.listen: cannot listen on {addr}: {e}"),
        })
    })?;
    // Tokio takes over a listener only in non-blocking mode.
    listener
        .set_nonblocking(true)
        .map_err(|e| UsageError(format!("daemon.listen: {addr}: {e}")))?;
    Ok(listener)
}

#[derive(Clone)]
struct Endpoint {
    cfg: watch::Receiver<Arc<Config>>,
    holder: Arc<str>,
    stats: Arc<metrics::DaemonStats>,
    metrics: Arc<Shared>,
    health: Arc<Shared>,
}

/// One gathering at a time, its result shared by the requests that waited for it and
/// reused for [`REUSE`].
#[derive(Default)]
struct Shared(tokio::sync::Mutex<Option<(std::time::Instant, Result<String, String>)>>);

impl Shared {
    async fn get<F, Fut>(&self, gather: F) -> Result<String, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        let mut slot = self.0.lock().await;
        if let Some((at, result)) = slot.as_ref() {
            if at.elapsed() < REUSE {
                return result.clone();
            }
        }
        let result = gather().await;
        *slot = Some((std::time::Instant::now(), result.clone()));
        result
    }
}

/// Serve `/metrics` and `/health` on `listener` until `shutdown` is cancelled (then
/// stop accepting, let requests in flight finish, and return). `holder`: this
/// daemon's leader-lease holder id ([`crate::lease::holder`]), for
/// `pgmaint_scheduler_leader`; `stats`: what the daemon counts itself (failovers).
pub async fn serve(
    listener: std::net::TcpListener,
    cfg: watch::Receiver<Arc<Config>>,
    holder: String,
    stats: Arc<metrics::DaemonStats>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let endpoint = Endpoint {
        cfg,
        holder: holder.into(),
        stats,
        metrics: Arc::default(),
        health: Arc::default(),
    };
    let app = Router::new()
        .route("/metrics", get(serve_metrics).fallback(not_found))
        .route("/health", get(serve_health).fallback(not_found))
        .fallback(not_found)
        .with_state(endpoint);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /health");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "daemon.listen is not a loopback address: anyone who reaches it can read the metrics (they hold \
                 task and replica names); keep it behind a firewall"
            );
        }
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // Out of file descriptors, most often: wait for some to be freed.
                tracing::warn!(
                    "daemon.listen: accepting a connection: {e}; backing off {backoff:?}"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Over the cap: closed at once (dropped).
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
        });
        while connections.try_join_next().is_some() {}
    }
    // Requests in flight get a moment to finish; the rest are dropped with the tasks.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn serve_metrics(State(e): State<Endpoint>) -> Response {
    let cfg = e.cfg.borrow().clone();
    let scraped = e
        .metrics
        .get(|| async {
            metrics::scrape(&cfg, &e.holder, &e.stats)
                .await
                .map_err(|err| {
                    let reason = err.one_line();
                    tracing::warn!(error = %reason, "metrics scrape failed");
                    reason
                })
        })
        .await;
    match scraped {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(reason) => unavailable(reason),
    }
}

async fn serve_health(State(e): State<Endpoint>) -> Response {
    let cfg = e.cfg.borrow().clone();
    let answered = e
        .health
        .get(|| async { primary_answers(&cfg).await.map(|()| "ok".to_string()) })
        .await;
    match answered {
        Ok(ok) => text(StatusCode::OK, ok),
        Err(reason) => unavailable(reason),
    }
}

/// `SELECT 1` on the primary within [`HEALTH_PATIENCE`], or why not, in one line.
async fn primary_answers(cfg: &Config) -> Result<(), String> {
    let ask = async {
        let client = metrics::connect_quickly(&cfg.primary, "pgmaint-health", HEALTH_PATIENCE)
            .await
            .map_err(|e| e.0)?;
        client.simple_query("SELECT 1").await.map_err(|e| {
            format!(
                "primary: SELECT 1 failed: {}",
                anyhow::Error::from(e).one_line()
            )
        })?;
        Ok(())
    };
    tokio::time::timeout(HEALTH_PATIENCE, ask)
        .await
        .unwrap_or_else(|_| Err("primary: no answer to SELECT 1 within 2s".into()))
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found".into())
}

fn unavailable(reason: String) -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, reason.replace('\n', " "))
}

fn text(status: StatusCode, mut body: String) -> Response {
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A config whose primary refuses connections at once (nothing listens on port 1).
    fn config_without_database() -> Config {
        let text = "[primary]\ndsn = \"host=127.0.0.1 port=1 user=postgres dbname=app\"\n\
                    [[replicas]]\nname = \"r1\"\ndsn = \"host=127.0.0.1 port=1 user=postgres dbname=app\"\n\
                    [results]\ndir = \"/tmp/pgmaint-http-test\"\n";
        Config::parse(text, &Default::default()).unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn without_a_database_health_is_503_and_unknown_paths_are_404() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Arc::new(config_without_database()));
        let shutdown = CancellationToken::new();
        let stats = Arc::new(metrics::DaemonStats::default());
        let server = tokio::spawn(serve(
            listener,
            rx,
            "test:1".into(),
            stats,
            shutdown.clone(),
        ));
        let health = get(addr, "/health").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.contains("primary.dsn: cannot connect"), "{health}");
        // /metrics still answers: the primary is down, as it says.
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("\npgmaint_primary_up 0\n"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let post =
            "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(post.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn an_address_in_use_is_a_one_line_error_naming_the_field() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.0, format!("daemon.listen: {addr} is already in use"));
    }
}
