//! TLS for every pgmaint connection, with libpq's `sslmode` semantics
//! (<https://www.postgresql.org/docs/15/libpq-ssl.html>).
//!
//! - `disable` never uses TLS; `allow` and `prefer` use it when the server offers it
//!   (pgmaint treats `allow` as `prefer`); `require` insists on it. These encrypt but do
//!   not verify the server's certificate: they protect against eavesdropping, not
//!   against an impostor.
//! - `verify-ca` also checks that the certificate chains to a root of `sslrootcert`;
//!   `verify-full` also checks that it names the host connected to (its
//!   subjectAltName, DNS name or IP address).
//! - libpq's backward-compatible rule: `require` with a root certificate file present
//!   verifies like `verify-ca`.
//! - a client certificate (`sslcert` + `sslkey`) is offered in every mode but
//!   `disable`.
//!
//! What each DSN asked for travels with it ([`TlsSettings`], built once when the
//! config is read), so every connect and every cancel request of that DSN uses it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// libpq tries without TLS first; pgmaint treats it as `prefer`.
    Allow,
    /// TLS when the server offers it (libpq's default), certificate not verified.
    #[default]
    Prefer,
    /// TLS, certificate not verified (but see the root certificate rule).
    Require,
    /// TLS, the certificate chains to a trusted root.
    VerifyCa,
    /// TLS, the certificate chains to a trusted root and names the host.
    VerifyFull,
}

impl SslMode {
    /// Every value, as libpq spells them.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The mode spelled `text`.
    pub fn parse(text: &str) -> Option<SslMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// As libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres must do at the connection's start (the certificate checks
    /// are the connector's).
    pub fn to_tokio(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            SslMode::Disable => T::Disable,
            SslMode::Allow | SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }

    /// `verify-ca` or `verify-full`.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The trusted roots of `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates (absolute path).
    File(PathBuf),
    /// `sslrootcert=system`: the system's trust store.
    System,
}

impl std::fmt::Display for RootCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootCert::File(p) => write!(f, "{}", p.display()),
            RootCert::System => f.write_str("system"),
        }
    }
}

/// A DSN's TLS settings, libpq's defaults applied (the files found, as absolute paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`.
    pub mode: SslMode,
    /// The roots to verify against: an existing file or the system store; `None`
    /// when none was given and `~/.postgresql/root.crt` does not exist.
    pub root_cert: Option<RootCert>,
    /// The client certificate and its key (`sslcert`, `sslkey`), when there is one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (but that the handshake is signed by its key): encryption only.
    None,
    /// That it chains to a trusted root.
    Chain,
    /// That it chains to a trusted root and names the host.
    ChainAndName,
}

/// A setting that cannot be used: the libpq keyword at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {text}")]
pub struct TlsError {
    /// The keyword: `sslmode`, `sslrootcert`, `sslcert` or `sslkey`.
    pub key: &'static str,
    /// What is wrong with it.
    pub text: String,
}

fn err(key: &'static str, text: String) -> TlsError {
    TlsError { key, text }
}

/// A DSN's TLS settings and the connector they make.
#[derive(Clone)]
pub struct TlsSettings {
    options: TlsOptions,
    verification: Verification,
    connector: Connector,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("options", &self.options)
            .field("verification", &self.verification)
            .finish()
    }
}

impl Default for TlsSettings {
    /// libpq's `prefer` without certificate files: encrypt when the server offers it.
    fn default() -> Self {
        TlsSettings::new(TlsOptions::default()).expect("no file to read")
    }
}

impl TlsSettings {
    /// Read the files of `options` and make the connector. An error names the keyword
    /// (`sslrootcert`, `sslcert`, `sslkey`) and the file.
    pub fn new(options: TlsOptions) -> Result<TlsSettings, TlsError> {
        let verification = match (options.mode, &options.root_cert) {
            (SslMode::Disable, _) => Verification::None,
            (SslMode::VerifyFull, _) => Verification::ChainAndName,
            (SslMode::VerifyCa, _) => Verification::Chain,
            // libpq: "if a root CA file exists, the behavior of sslmode=require will
            // be the same as that of verify-ca".
            (SslMode::Require, Some(RootCert::File(_))) => Verification::Chain,
            _ => Verification::None,
        };
        if options.mode != SslMode::Disable
            && options.root_cert == Some(RootCert::System)
            && options.mode != SslMode::VerifyFull
        {
            return Err(err(
                "sslmode",
                format!(
                    "weak sslmode {:?} may not be used with sslrootcert=system (use \"verify-full\")",
                    options.mode.as_str()
                ),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let builder = if verification == Verification::None {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        } else {
            let roots = match &options.root_cert {
                Some(r) => root_store(r)?,
                None => {
                    return Err(err(
                        "sslrootcert",
                        format!(
                            "sslmode={} needs a root certificate file",
                            options.mode.as_str()
                        ),
                    ))
                }
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("sslrootcert", format!("{}: {e}", options.root_cert_text())))?;
            match verification {
                Verification::ChainAndName => builder.with_webpki_verifier(webpki),
                _ => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki))),
            }
        };
        let config = match &options.client_cert {
            Some((cert, key)) if options.mode != SslMode::Disable => {
                let certs = client_certs(cert)?;
                let key_der = private_key(key)?;
                builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                    err(
                        "sslkey",
                        format!(
                            "private key file {:?} cannot be used with certificate {:?}: {e}",
                            key.display().to_string(),
                            cert.display().to_string()
                        ),
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(TlsSettings {
            options,
            verification,
            connector: Connector(MakeRustlsConnect::new(config)),
        })
    }

    /// The settings as resolved.
    pub fn options(&self) -> &TlsOptions {
        &self.options
    }

    /// What is checked of the server's certificate.
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// The connector for connects and cancel requests.
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// One line on a connection that failed because the server's certificate did not
    /// verify (unknown CA, host name mismatch, …); `None` for any other failure.
    pub fn failure_text(&self, e: &tokio_postgres::Error) -> Option<String> {
        let rustls_error = std::iter::successors(std::error::Error::source(e), |c| c.source())
            .find_map(|c| {
                c.downcast_ref::<rustls::Error>().or_else(|| {
                    c.downcast_ref::<std::io::Error>()
                        .and_then(|io| io.get_ref())
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                })
            })?;
        let mode = self.options.mode.as_str();
        let roots = self.options.root_cert_text();
        let rustls::Error::InvalidCertificate(cert) = rustls_error else {
            return Some(format!(
                "TLS handshake failed (sslmode={mode}): {rustls_error}"
            ));
        };
        Some(match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a CA of sslrootcert {roots} (unknown CA; sslmode={mode})"
            ),
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "host name mismatch: the server's certificate is not valid for {:?} (it is for {}; sslmode={mode})",
                expected.to_str(),
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    // webpki writes them as `DnsName("db1")`: the name alone.
                    let bare = |p: &String| {
                        p.split_once("(\"")
                            .and_then(|(_, r)| r.strip_suffix("\")"))
                            .unwrap_or(p)
                            .to_string()
                    };
                    presented.iter().map(bare).collect::<Vec<_>>().join(", ")
                }
            ),
            CertificateError::NotValidForName => format!(
                "host name mismatch: the server's certificate is not valid for the host connected to (sslmode={mode})"
            ),
            other => format!(
                "the server's certificate does not verify against sslrootcert {roots}: {other} (sslmode={mode})"
            ),
        })
    }
}

impl TlsOptions {
    fn root_cert_text(&self) -> String {
        match &self.root_cert {
            Some(r) => r.to_string(),
            None => "(none)".into(),
        }
    }
}

fn show(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The trust anchors of `root`.
fn root_store(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(err(
                    "sslrootcert",
                    format!(
                        "sslrootcert=system: no trusted root certificate found on this system{why}"
                    ),
                ));
            }
        }
        RootCert::File(path) => {
            let text = std::fs::read(path).map_err(|e| {
                err(
                    "sslrootcert",
                    format!("could not read root certificate file {}: {e}", show(path)),
                )
            })?;
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| {
                    err(
                        "sslrootcert",
                        format!("root certificate file {}: {e}", show(path)),
                    )
                })?;
                store.add(cert).map_err(|e| {
                    err(
                        "sslrootcert",
                        format!("root certificate file {}: {e}", show(path)),
                    )
                })?;
            }
            if store.is_empty() {
                return Err(err(
                    "sslrootcert",
                    format!(
                        "root certificate file {} holds no PEM certificate",
                        show(path)
                    ),
                ));
            }
        }
    }
    Ok(store)
}

/// The certificate chain of `sslcert`.
fn client_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = std::fs::read(path).map_err(|e| {
        err(
            "sslcert",
            format!("could not read certificate file {}: {e}", show(path)),
        )
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| err("sslcert", format!("certificate file {}: {e}", show(path))))?;
    let Some(first) = certs.first() else {
        return Err(err(
            "sslcert",
            format!("certificate file {} holds no PEM certificate", show(path)),
        ));
    };
    // An X.509 v1 certificate, say: rustls would only say so once paired with the key.
    rustls::server::ParsedCertificate::try_from(first).map_err(|e| {
        err(
            "sslcert",
            format!("certificate file {}: unusable certificate: {e}", show(path)),
        )
    })?;
    Ok(certs)
}

/// The key of `sslkey`, refused as libpq refuses it when others may read it: a file
/// must be 0600 or less, or owned by root and 0640 or less.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        err(
            "sslkey",
            format!(
                "certificate present, but not private key file {}: {e}",
                show(path)
            ),
        )
    })?;
    if !meta.is_file() {
        return Err(err(
            "sslkey",
            format!("private key file {} is not a regular file", show(path)),
        ));
    }
    let mode = meta.mode();
    let too_open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(err(
            "sslkey",
            format!(
                "private key file {} has group or world access; file must have permissions u=rw (0600) or less \
                 if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
                show(path)
            ),
        ));
    }
    let text = std::fs::read(path).map_err(|e| {
        err(
            "sslkey",
            format!("could not read private key file {}: {e}", show(path)),
        )
    })?;
    if String::from_utf8_lossy(&text).contains("ENCRYPTED") {
        return Err(err(
            "sslkey",
            format!(
                "private key file {} is encrypted; pgmaint reads unencrypted keys only (sslpassword is not \
                 supported): decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`",
                show(path)
            ),
        ));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        err(
            "sslkey",
            format!("private key file {}: no PEM private key ({e})", show(path)),
        )
    })
}

/// The TLS connector of one DSN, for `tokio_postgres` connects and cancel requests.
#[derive(Clone)]
pub struct Connector(MakeRustlsConnect);

/// The name handed to rustls when a DSN gives only `hostaddr` (no host name): it is
/// never checked (`verify-full` needs a host, see the config), rustls needs one.
const NO_HOST_NAME: &str = "pgmaint.invalid";

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        let name = if hostname.is_empty() {
            NO_HOST_NAME
        } else {
            hostname
        };
        <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(&mut self.0, name)
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the names in the
/// certificate are not looked at. rustls checks the chain before the name, so a
/// name error means the chain verified.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts the server's certificate without checking who signed it (libpq's `require`),
/// but still checks that the handshake is signed by that certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
