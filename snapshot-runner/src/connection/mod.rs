//! Connections to PostgreSQL, for every part of pgmaint: the scans on the replica, the
//! uploader and the coordinator on the primary. One place, so every session gets the
//! same time-outs, keepalives and TLS handling.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

pub mod tls;

use tls::TlsSettings;

/// Where and how to connect: a tokio-postgres config and the TLS settings of its DSN
/// (`sslmode`, `sslrootcert`, client certificate), which tokio-postgres's own config
/// cannot hold. Derefs to the tokio-postgres config for everything else.
#[derive(Clone)]
pub struct Config {
    pg: tokio_postgres::Config,
    tls: Arc<TlsSettings>,
}

impl Config {
    /// `pg` with `tls`; tokio-postgres's `ssl_mode` is set from `tls`'s mode.
    pub fn new(mut pg: tokio_postgres::Config, tls: TlsSettings) -> Config {
        pg.ssl_mode(tls.options().mode.to_tokio());
        Config {
            pg,
            tls: Arc::new(tls),
        }
    }

    /// `pg` with this config's TLS settings (another host of the same DSN, say).
    pub fn with_pg(&self, mut pg: tokio_postgres::Config) -> Config {
        pg.ssl_mode(self.tls.options().mode.to_tokio());
        Config {
            pg,
            tls: self.tls.clone(),
        }
    }

    /// The DSN's TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The tokio-postgres config.
    pub fn pg(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// The token that cancels the statement running on `client` (a session of this
    /// config), with this config's TLS settings.
    pub fn cancel_token(&self, client: &Client) -> CancelToken {
        CancelToken {
            token: client.cancel_token(),
            tls: self.tls.clone(),
        }
    }
}

impl From<tokio_postgres::Config> for Config {
    /// `pg` with libpq's TLS defaults and no certificate file: its own `sslmode`
    /// (disable, prefer or require), the server's certificate not verified.
    fn from(pg: tokio_postgres::Config) -> Config {
        use tokio_postgres::config::SslMode as T;
        let mode = match pg.get_ssl_mode() {
            T::Disable => tls::SslMode::Disable,
            T::Require => tls::SslMode::Require,
            _ => tls::SslMode::Prefer,
        };
        let options = tls::TlsOptions {
            mode,
            ..Default::default()
        };
        Config::new(
            pg,
            TlsSettings::new(options).expect("no certificate file to read"),
        )
    }
}

impl std::str::FromStr for Config {
    type Err = tokio_postgres::Error;

    /// A tokio-postgres connection string, with [`Config::from`]'s TLS settings
    /// (pgmaint's own DSNs are resolved with libpq's conventions instead).
    fn from_str(s: &str) -> Result<Config, tokio_postgres::Error> {
        Ok(s.parse::<tokio_postgres::Config>()?.into())
    }
}

impl std::ops::Deref for Config {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.pg
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.pg
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("pg", &self.pg)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A token that cancels a session's statement, with its DSN's TLS settings.
#[derive(Clone)]
pub struct CancelToken {
    token: tokio_postgres::CancelToken,
    tls: Arc<TlsSettings>,
}

/// Open a connection and drive it in the background. The one place pgmaint connects,
/// so every session gets the same time-outs and TLS handling.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = connect_raw(config).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection closed with an error");
        }
    });
    Ok(client)
}

/// The connection of a session of `config`, for a caller that drives it itself (to
/// read its notifications), with the time-outs, keepalives and TLS of [`connect`].
pub async fn connect_raw(
    config: &Config,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, ConnectionStream>,
    ),
    tokio_postgres::Error,
> {
    let mut pg = config.pg.clone();
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    // A peer that vanishes (host down, network partition) must fail our calls within
    // a minute, not after the kernel's default of many minutes: while a replica is
    // paused, every hung call stretches the pause.
    pg.keepalives(true);
    if pg.get_keepalives_idle() > Duration::from_secs(30) {
        pg.keepalives_idle(Duration::from_secs(30));
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(Duration::from_secs(10));
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(3);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(Duration::from_secs(60));
    }
    pg.connect(config.tls.connector()).await
}

/// The TLS stream type of a connection made by [`connect_raw`].
pub type ConnectionStream =
    <tls::Connector as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// Cancel the statement running on the session of `token` on the server too: a
/// caller that merely stops awaiting it leaves the server working. Best effort: if the
/// request fails, the caller stops waiting all the same.
pub async fn cancel_query(token: &CancelToken) {
    let _ = token.token.cancel_query(token.tls.connector()).await;
}
