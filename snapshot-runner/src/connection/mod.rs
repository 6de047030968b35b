//! Connections to PostgreSQL, for every part of pgmaint: the scans on the replica, the
//! uploader and the coordinator on the primary. One place, so every session gets the
//! same time-outs, keepalives and TLS handling.

use std::time::Duration;

use tokio_postgres::Client;

pub mod tls;

/// Open a connection and drive it in the background. The one place pgmaint connects,
/// so every session gets the same time-outs and TLS handling.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // A peer that vanishes (host down, network partition) must fail our calls within
    // a minute, not after the kernel's default of many minutes: while a replica is
    // paused, every hung call stretches the pause.
    config.keepalives(true);
    if config.get_keepalives_idle() > Duration::from_secs(30) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    let (client, connection) = config.connect(tls::connector()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection closed with an error");
        }
    });
    Ok(client)
}

/// Cancel the statement running on the session of `token` on the server too: a
/// caller that merely stops awaiting it leaves the server working. Best effort: if the
/// request fails, the caller stops waiting all the same.
pub async fn cancel_query(token: &tokio_postgres::CancelToken) {
    let _ = token.cancel_query(tls::connector()).await;
}
