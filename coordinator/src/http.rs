//! PLACEHOLDER until the metrics branch lands (replaced by it).
use crate::config::Config;
use crate::UsageError;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, UsageError> {
    std::net::TcpListener::bind(addr).map_err(|e| UsageError(format!("daemon.listen: {addr}: {e}")))
}
pub async fn serve(
    _l: std::net::TcpListener,
    _c: tokio::sync::watch::Receiver<Arc<Config>>,
    _h: String,
    s: CancellationToken,
) {
    s.cancelled().await
}
