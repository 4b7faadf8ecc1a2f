//! TLS to the source, shared by the SQL client ([`super::connect::sql_connect`]) and the
//! replication client ([`super::replication::ReplicationClient`]).
//!
//! rustls with the *ring* provider, installed explicitly in every [`ClientConfig`] (this module
//! never uses or sets the process-wide default provider; the MySQL client library needs one,
//! and `source::mysql::connect` installs *ring* there when a MySQL source uses TLS).
//!
//! # `sslmode` (source URL parameter; libpq semantics unless noted)
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server accepts it; plaintext when it declines, **and** when the TLS handshake fails (a warning is logged), as libpq does | not checked, unless `sslrootcert` is given: then the chain is checked as with `verify-ca` (libpq) |
//! | `require` | mandatory | not checked, unless `sslrootcert` is given: then as `verify-ca` (libpq's rule for an existing root certificate) |
//! | `verify-ca` | mandatory | chain up to a trusted root; the host name is not checked |
//! | `verify-full` | mandatory | chain and host name: the URL's host must be a DNS name or IP address in the certificate's subjectAltName |
//!
//! Trusted roots: `sslrootcert=<path>` names a PEM file with one or more CA certificates. Without
//! it, `verify-ca` and `verify-full` use the system trust store (`rustls-native-certs`, which
//! honours `SSL_CERT_FILE` / `SSL_CERT_DIR`). This differs from libpq, which reads
//! `~/.postgresql/root.crt` and fails when it is missing; tidemark reads nothing from
//! `~/.postgresql` and no `PGSSL*` environment variables. `verify-ca` against the system store
//! accepts a certificate any public CA issued for any name, so it logs a warning.
//! `sslrootcert=system` names the system store explicitly and, as in libpq 16+, only goes with
//! `verify-full` (which it then implies when `sslmode` is absent).
//!
//! Even without certificate checks the handshake signature is verified, so the session is bound
//! to the key of the certificate the server presented (which is what channel binding relies on).
//!
//! Not supported (a configuration error says so): `sslmode=allow`, client certificates
//! (`sslcert`, `sslkey`, `sslpassword`), revocation lists (`sslcrl`, `sslcrldir`). Unix-domain
//! sockets never use TLS, whatever `sslmode` says (libpq ignores `sslmode` for them too).
//! `sslnegotiation=direct` (PostgreSQL 17+) is honoured by both clients.
//!
//! # Channel binding
//!
//! Over TLS both clients compute `tls-server-end-point` (RFC 5929: a hash of the server's
//! certificate with the hash function of its signature algorithm, SHA-256 for MD5 / SHA-1) and
//! authenticate with SCRAM-SHA-256-PLUS when the server offers it (`channel_binding=prefer`, the
//! default). `channel_binding=require` refuses any authentication without it;
//! `channel_binding=disable` never uses it. Certificates signed with an algorithm that has no
//! single hash (Ed25519, RSA-PSS) give no binding data.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, ErrorKind, Result};

/// How long a TLS handshake may take once the TCP connection is up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The advice attached to every certificate verification failure.
const VERIFY_ADVICE: &str = "set sslrootcert=<path to the PEM file of the CA that signed the server's certificate> \
     in the source URL, or use sslmode=require to encrypt without verifying the server";

pub use crate::source::ssl_mode::SslMode;
use crate::source::ssl_mode::split_tls_params;

impl SslMode {
    /// The closest mode tokio-postgres knows; the certificate checks are done by our verifier.
    pub(crate) fn to_pg(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// `sslrootcert`: where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=system`: the system trust store.
    System,
    /// A PEM file with one or more CA certificates.
    File(PathBuf),
}

/// The TLS settings of a source URL that tokio-postgres does not handle itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`, when given.
    pub root_cert: Option<RootCert>,
}

/// What is checked about the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    Nothing,
    Chain,
    ChainAndName,
}

impl TlsSettings {
    /// The TLS settings of a bare `tokio_postgres::Config`: its `ssl_mode` (disable, prefer,
    /// require) and no `sslrootcert`, so nothing is verified.
    pub fn from_pg_config(cfg: &tokio_postgres::Config) -> Self {
        use tokio_postgres::config::SslMode as Pg;
        let mode = match cfg.get_ssl_mode() {
            Pg::Disable => SslMode::Disable,
            Pg::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        TlsSettings {
            mode,
            root_cert: None,
        }
    }

    /// Takes the TLS parameters tidemark handles (`sslmode`, `sslrootcert`) out of a
    /// `postgres://` / `postgresql://` URL. Returns the URL without them (for
    /// `tokio_postgres::Config::from_str`) and the settings; `None` for a string that is not such
    /// a URL (a `key=value` connection string), which is returned unchanged.
    pub fn split_url(url: &str) -> Result<(String, Option<TlsSettings>)> {
        let Some((scheme, rest)) = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|p| url.strip_prefix(p).map(|r| (*p, r)))
        else {
            return Ok((url.to_string(), None));
        };
        let split = split_tls_params(&format!("{scheme}{rest}"))?;
        let root = split.root;
        let root_cert = match root.as_deref() {
            None | Some("") => None,
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
        };
        let mode = match (split.mode, &root_cert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(Error::config(format!(
                    "sslmode={} may not be used with sslrootcert=system: public CAs certify any host name, so use sslmode=verify-full",
                    m.as_str()
                )));
            }
            (m, _) => m.unwrap_or_default(),
        };
        Ok((split.url, Some(TlsSettings { mode, root_cert })))
    }

    fn verification(&self) -> Verification {
        match self.mode {
            SslMode::VerifyFull => Verification::ChainAndName,
            SslMode::VerifyCa => Verification::Chain,
            // libpq: with a root certificate, require (and prefer) verify the chain.
            _ if self.root_cert.is_some() => Verification::Chain,
            _ => Verification::Nothing,
        }
    }

    /// The trusted roots: the `sslrootcert` file, else the system store.
    fn roots(&self) -> Result<RootCertStore> {
        match &self.root_cert {
            Some(RootCert::File(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::with_source(
                        ErrorKind::Config,
                        format!("cannot read sslrootcert {}", path.display()),
                        e,
                    )
                })?;
                let mut certs = Vec::new();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    certs.push(c.map_err(|e| {
                        Error::with_source(
                            ErrorKind::Config,
                            format!("sslrootcert {} is not a valid PEM file", path.display()),
                            e,
                        )
                    })?);
                }
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(Error::config(format!(
                        "sslrootcert {} holds no usable CA certificate: it must contain PEM blocks \
                         (-----BEGIN CERTIFICATE-----) of the CA that signed the server's certificate",
                        path.display()
                    )));
                }
                Ok(roots)
            }
            None | Some(RootCert::System) => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default();
                    return Err(Error::config(format!(
                        "sslmode={} found no trusted root certificates in the system store{why}: \
                         set sslrootcert=<path to the PEM file of the CA that signed the server's certificate>",
                        self.mode.as_str()
                    )));
                }
                Ok(roots)
            }
        }
    }

    /// The rustls client configuration for these settings; `None` for `sslmode=disable`.
    /// Reads `sslrootcert` (or the system store) when the certificate is checked.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verification = self.verification();
        let verifier: Arc<dyn ServerCertVerifier> = match verification {
            Verification::Nothing => Arc::new(RelaxedVerifier {
                roots: None,
                provider: provider.clone(),
            }),
            Verification::Chain => {
                if self.root_cert.is_none() {
                    tracing::warn!(
                        "sslmode=verify-ca without sslrootcert trusts every certificate a public CA issued, for any host: \
                         set sslrootcert to your server's CA, or use sslmode=verify-full"
                    );
                }
                Arc::new(RelaxedVerifier {
                    roots: Some(Arc::new(self.roots()?)),
                    provider: provider.clone(),
                })
            }
            Verification::ChainAndName => WebPkiServerVerifier::builder_with_provider(
                Arc::new(self.roots()?),
                provider.clone(),
            )
            .build()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    "cannot set up TLS certificate verification",
                    e,
                )
            })?,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::with_source(ErrorKind::Fatal, "cannot set up the TLS client", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17 checks the ALPN protocol when the client sends one; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// A connector for these settings; `None` for `sslmode=disable`.
    pub fn connector(&self) -> Result<Option<TlsConnector>> {
        Ok(self.client_config()?.map(|config| TlsConnector {
            config,
            check_name: self.verification() == Verification::ChainAndName,
        }))
    }
}

/// Checks the chain (when `roots` is set) but never the host name; always checks the handshake
/// signature against the presented certificate.
#[derive(Debug)]
struct RelaxedVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for RelaxedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Performs TLS handshakes with the settings it was built from ([`TlsSettings::connector`]).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    /// verify-full: the host name must be valid for the certificate.
    check_name: bool,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("check_name", &self.check_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// The name sent as SNI and checked against the certificate (verify-full). Without a name
    /// check, a host that is not a valid DNS name or IP address is not an error.
    fn server_name(&self, host: &str) -> Result<ServerName<'static>> {
        match ServerName::try_from(host.to_string()) {
            Ok(name) => Ok(name),
            Err(_) if !self.check_name => Ok(ServerName::IpAddress(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED).into(),
            )),
            Err(e) => Err(Error::with_source(
                ErrorKind::Config,
                format!(
                    "sslmode=verify-full needs the host name the server's certificate was issued for, and {host:?} is not a valid DNS name or IP address"
                ),
                e,
            )),
        }
    }

    /// The TLS handshake over `stream` (after the server accepted an SSLRequest, or directly).
    /// `host` is the host of the URL. Verification failures are config errors that say what to
    /// change; a lost connection is transient.
    pub async fn handshake<S>(
        &self,
        stream: S,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.server_name(host)?;
        let connect = tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, stream);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(handshake_error(e, host)),
            Err(_) => {
                return Err(Error::transient(format!(
                    "the TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}"
                )));
            }
        };
        let (_, session) = stream.get_ref();
        tracing::debug!(
            host,
            version = ?session.protocol_version(),
            cipher_suite = ?session.negotiated_cipher_suite().map(|s| s.suite()),
            "TLS established"
        );
        Ok(stream)
    }
}

/// Maps a failed handshake to an error whose kind and message say what to do.
fn handshake_error(e: io::Error, host: &str) -> Error {
    let Some(tls) = e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) else {
        return Error::with_source(
            ErrorKind::Transient,
            "connection lost during the TLS handshake",
            e,
        );
    };
    let message = match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            let names = match tls {
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    presented,
                    ..
                }) => format!(" (it names {})", presented.join(", ")),
                _ => String::new(),
            };
            format!(
                "the server's TLS certificate could not be verified: it is not valid for host {host:?}{names}. \
                 Connect with a host name the certificate was issued for, or use sslmode=verify-ca to check the CA only"
            )
        }
        rustls::Error::InvalidCertificate(
            c @ (CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. }),
        ) => format!(
            "the server's TLS certificate could not be verified: it is expired or not valid yet ({c:?}): \
             renew the server's certificate, or check this machine's clock"
        ),
        rustls::Error::InvalidCertificate(c) => format!(
            "the server's TLS certificate could not be verified: {}: {VERIFY_ADVICE}",
            certificate_problem(c)
        ),
        other => format!(
            "the TLS handshake failed ({other}): check the server's TLS settings (ssl, ssl_min_protocol_version, certificate)"
        ),
    };
    Error::with_source(ErrorKind::Config, message, e)
}

fn certificate_problem(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => {
            "it is not signed by a trusted CA (unknown issuer)".to_string()
        }
        CertificateError::BadSignature => "its signature is invalid".to_string(),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Channel binding (tls-server-end-point, RFC 5929)
// ---------------------------------------------------------------------------------------------

/// The `tls-server-end-point` channel binding data of a session: the hash of the server's
/// certificate. `None` when the certificate's signature algorithm has no single hash function.
pub fn tls_server_end_point<S>(stream: &tokio_rustls::client::TlsStream<S>) -> Option<Vec<u8>> {
    let (_, session) = stream.get_ref();
    let cert = session.peer_certificates()?.first()?;
    end_point_hash(cert.as_ref())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(cert_der)? {
        CertHash::Sha224 => sha2::Sha224::digest(cert_der).to_vec(),
        CertHash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        CertHash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        CertHash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// The hash function RFC 5929 picks for a certificate: that of its signature algorithm, with
/// MD5 and SHA-1 upgraded to SHA-256 (what PostgreSQL's server computes, too).
fn signature_hash(cert_der: &[u8]) -> Option<CertHash> {
    const RSA: [u8; 8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA1: [u8; 7] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    const ECDSA_SHA2: [u8; 7] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, .. }, .. }
    let (0x30, cert, _) = der_tlv(cert_der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_tlv(cert)? else {
        return None;
    };
    let (0x30, algorithm, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(algorithm)? else {
        return None;
    };
    match oid {
        [rsa @ .., last] if rsa == RSA => match last {
            0x04 | 0x05 | 0x0B => Some(CertHash::Sha256), // md5, sha1, sha256 WithRSAEncryption
            0x0C => Some(CertHash::Sha384),
            0x0D => Some(CertHash::Sha512),
            0x0E => Some(CertHash::Sha224),
            _ => None, // RSASSA-PSS (0x0A) carries its hash in parameters: no binding
        },
        o if o == ECDSA_SHA1 => Some(CertHash::Sha256),
        [ecdsa @ .., last] if ecdsa == ECDSA_SHA2 => match last {
            0x01 => Some(CertHash::Sha224),
            0x02 => Some(CertHash::Sha256),
            0x03 => Some(CertHash::Sha384),
            0x04 => Some(CertHash::Sha512),
            _ => None,
        },
        _ => None,
    }
}

/// One DER element: (tag, contents, rest). Single-byte tags, definite lengths up to 4 bytes.
fn der_tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres glue (the SQL client)
// ---------------------------------------------------------------------------------------------

/// tokio-postgres' `MakeTlsConnect` over [`TlsConnector`]. Errors it produces are
/// [`Error`]s (reach them through the source of the `tokio_postgres::Error`).
#[derive(Clone, Debug)]
pub struct MakeRustlsConnect {
    connector: Option<TlsConnector>,
}

impl MakeRustlsConnect {
    /// `None` connector: only for `sslmode=disable` (a TLS attempt then fails).
    pub fn new(connector: Option<TlsConnector>) -> Self {
        MakeRustlsConnect { connector }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect> {
        Ok(RustlsConnect {
            connector: self.connector.clone(),
            host: host.to_string(),
        })
    }
}

/// One TLS handshake for tokio-postgres.
pub struct RustlsConnect {
    connector: Option<TlsConnector>,
    host: String,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self.connector.ok_or_else(|| {
                Error::fatal("TLS was attempted with sslmode=disable (no TLS connector)")
            })?;
            let stream = connector.handshake(stream, &self.host).await?;
            let end_point = tls_server_end_point(&stream);
            Ok(RustlsStream { stream, end_point })
        })
    }
}

/// A TLS stream for tokio-postgres, with its channel binding data.
pub struct RustlsStream<S> {
    stream: tokio_rustls::client::TlsStream<S>,
    end_point: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match &self.end_point {
            Some(h) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(h.clone()),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The TLS [`Error`] behind a failed tokio-postgres connection, if TLS is what failed.
pub(crate) fn tls_error_of(e: &tokio_postgres::Error) -> Option<&Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(ours) = err.downcast_ref::<Error>() {
            return Some(ours);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::postgres::connect::{parse_url, sql_connect};
    use crate::source::postgres::replication::ReplicationClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Test certificates (ECDSA P-256, valid 2000-2100), made with `openssl ca`: a CA, a server
    // certificate it signed for DNS:localhost only (not 127.0.0.1), and an unrelated CA.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBczCCARqgAwIBAgICEAAwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVdGlkZW1h
cmsgdW5pdC10ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAw
WjAgMR4wHAYDVQQDDBV0aWRlbWFyayB1bml0LXRlc3QgQ0EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATC1SGk7AuDfccKa5PWEZ7kAaas6a8/c+WqLmraEJN4HZ3f
hpfuKBcmJZzJH+OteN5Rlp3UYSGVG6NBHiIZm3mlo0IwQDAPBgNVHRMBAf8EBTAD
AQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUTxAMSlP8FIoUyKwiKyaqulFd
QdgwCgYIKoZIzj0EAwIDRwAwRAIga0kwKEt+9uQCq4dfCI8lIZHis+ZVT+do9pKP
090tit8CIDowWPbtQaTKjhnV7wbUjs7p4mYZS0XsOO+RjDVtuL8Q
-----END CERTIFICATE-----
";
    const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASagAwIBAgICEAEwCgYIKoZIzj0EAwIwJjEkMCIGA1UEAwwbdGlkZW1h
cmsgdW5pdC10ZXN0IG90aGVyIENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAx
MDAwMDAwWjAmMSQwIgYDVQQDDBt0aWRlbWFyayB1bml0LXRlc3Qgb3RoZXIgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARtwhER0wvFJE/S6XFKbelrsgiIajlR
gRcpi/wruN92Q6PZV+uXwuIiekvpcR0AUgpvE/feQ+UHLC+XZZu8lJg5o0IwQDAP
BgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUWnxXw6Sg
WIibmlgWkR4kCK0qVrwwCgYIKoZIzj0EAwIDRwAwRAIgQR7p1V+Kp1ye4PaOzPOn
ZZTK+UaxiGWNxwgnZYzm064CIBS2fcoAsCSK9vVyA3FPTQa8ppAZGNn7XEAb4i2U
3qS5
-----END CERTIFICATE-----
";
    const SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgICEAIwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVdGlkZW1h
cmsgdW5pdC10ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAw
WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQRwdQDe4c5xGCLzVU4exrZAFDjLZNIIT/8MCj/Rbf9jk/ORuZiVSfKXwGwAz2q
gPTKz4M6FRvlXUrPOCWEXsLto4GMMIGJMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBQGA1UdEQQNMAuCCWxvY2FsaG9z
dDAdBgNVHQ4EFgQUwBfdjcPNPB6zIy4X4IOl3fhssV4wHwYDVR0jBBgwFoAUTxAM
SlP8FIoUyKwiKyaqulFdQdgwCgYIKoZIzj0EAwIDSAAwRQIgC6u5Q96/2F350OoY
ekNoCayYcGEdEUvWhMzr3/C1Lt0CIQDN5hpIVBXe2CTD/DrFm2doAc9KKzQ7Vd2c
3mjUIAczvg==
-----END CERTIFICATE-----
";
    const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHNnGfanaEOgxq7da
uNgtvzr+2ONraFqDudGtWkF1gbyhRANCAAQRwdQDe4c5xGCLzVU4exrZAFDjLZNI
IT/8MCj/Rbf9jk/ORuZiVSfKXwGwAz2qgPTKz4M6FRvlXUrPOCWEXsLt
-----END PRIVATE KEY-----
";
    /// `openssl x509 -in server.crt -outform der | sha256sum`
    const SERVER_CERT_SHA256: &str =
        "48888c74a337216b3a7534ef6b6db48bfcfa9f1a143f67c5274e124a7d5df8b7";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn settings(mode: SslMode, root: Option<RootCert>) -> TlsSettings {
        TlsSettings {
            mode,
            root_cert: root,
        }
    }

    #[test]
    fn sslmode_values() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(m.as_str()).unwrap(), m);
        }
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert!(SslMode::VerifyCa.requires_tls() && !SslMode::Prefer.requires_tls());
        let e = SslMode::parse("allow").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("sslmode=prefer"), "{e}");
        let e = SslMode::parse("verify_full").unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
    }

    #[test]
    fn url_params_are_taken_out() {
        let (url, tls) = TlsSettings::split_url(
            "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fmy%20ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(
            tls.unwrap(),
            settings(
                SslMode::VerifyFull,
                Some(RootCert::File("/tmp/my ca.pem".into()))
            )
        );

        let (url, tls) = TlsSettings::split_url("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(url, "postgresql://h/db");
        assert_eq!(tls.unwrap(), settings(SslMode::Require, None));

        // No parameters: unchanged, the default mode.
        let (url, tls) = TlsSettings::split_url("postgres://u@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(tls.unwrap(), TlsSettings::default());

        // '?' and '&' in the password are not parameters (credentials end at the first '@').
        let (url, tls) =
            TlsSettings::split_url("postgres://u:a?sslmode=x&b@h/db?sslmode=disable").unwrap();
        assert_eq!(url, "postgres://u:a?sslmode=x&b@h/db");
        assert_eq!(tls.unwrap().mode, SslMode::Disable);

        // sslrootcert=system implies verify-full and refuses weaker modes (libpq 16+).
        let (_, tls) = TlsSettings::split_url("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(
            tls.unwrap(),
            settings(SslMode::VerifyFull, Some(RootCert::System))
        );
        let e = TlsSettings::split_url("postgres://h/db?sslmode=verify-ca&sslrootcert=system")
            .unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");

        for bad in [
            "postgres://h/db?sslcert=/c.pem",
            "postgres://h/db?sslkey=/k.pem",
            "postgres://h/db?sslcrl=/x",
            "postgres://h/db?sslmode=allow",
            "postgres://h/db?sslrootcert=%zz",
        ] {
            let e = TlsSettings::split_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }

        // A key=value string is left to tokio-postgres.
        let (s, tls) = TlsSettings::split_url("host=h dbname=db sslmode=require").unwrap();
        assert_eq!(s, "host=h dbname=db sslmode=require");
        assert!(tls.is_none());
    }

    #[test]
    fn parse_url_keeps_tls_beside_the_config() {
        use tokio_postgres::config::SslMode as Pg;
        let src = parse_url(
            "postgres://u:pw@localhost:5433/db?sslmode=verify-ca&sslrootcert=/ca.pem&channel_binding=require",
        )
        .unwrap();
        assert_eq!(src.config.get_ssl_mode(), Pg::Require);
        assert_eq!(src.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            src.config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
        assert_eq!(
            src.tls,
            settings(SslMode::VerifyCa, Some(RootCert::File("/ca.pem".into())))
        );
        let src = parse_url("postgres://u@localhost/db").unwrap();
        assert_eq!(src.config.get_ssl_mode(), Pg::Prefer);
        assert_eq!(src.tls, TlsSettings::default());
        let src = parse_url("host=localhost dbname=db sslmode=disable").unwrap();
        assert_eq!(src.tls.mode, SslMode::Disable);
        // Not a leak: the password is not in the error.
        let e = parse_url("postgres://u:secret@h/db?sslmode=bogus").unwrap_err();
        assert!(!e.one_line().contains("secret"), "{e}");
    }

    #[test]
    fn verification_follows_libpq() {
        let file = || Some(RootCert::File("/ca.pem".into()));
        assert_eq!(
            settings(SslMode::Prefer, None).verification(),
            Verification::Nothing
        );
        assert_eq!(
            settings(SslMode::Require, None).verification(),
            Verification::Nothing
        );
        // A root certificate makes require (and prefer) check the chain.
        assert_eq!(
            settings(SslMode::Require, file()).verification(),
            Verification::Chain
        );
        assert_eq!(
            settings(SslMode::Prefer, file()).verification(),
            Verification::Chain
        );
        assert_eq!(
            settings(SslMode::VerifyCa, None).verification(),
            Verification::Chain
        );
        assert_eq!(
            settings(SslMode::VerifyFull, file()).verification(),
            Verification::ChainAndName
        );
    }

    #[test]
    fn client_config_building() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, format!("{OTHER_CA}{CA}")).unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();

        assert!(
            settings(SslMode::Disable, None)
                .client_config()
                .unwrap()
                .is_none()
        );
        let cfg = settings(SslMode::Require, None)
            .client_config()
            .unwrap()
            .unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"postgresql".to_vec()]);
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let s = settings(mode, Some(RootCert::File(ca.clone())));
            assert!(s.client_config().unwrap().is_some());
            assert!(s.roots().unwrap().len() == 2);
        }

        let missing = settings(
            SslMode::VerifyFull,
            Some(RootCert::File(dir.path().join("nope.pem"))),
        );
        let e = missing.client_config().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("cannot read sslrootcert"), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let e = settings(SslMode::VerifyCa, Some(RootCert::File(not_pem)))
            .client_config()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("no usable CA certificate"), "{e}");
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        let der = CertificateDer::from_pem_slice(SERVER_CERT.as_bytes()).unwrap();
        assert_eq!(signature_hash(&der), Some(CertHash::Sha256));
        assert_eq!(hex(&end_point_hash(&der).unwrap()), SERVER_CERT_SHA256);

        // Certificate { tbs, AlgorithmIdentifier { oid, NULL }, BIT STRING } with a given OID.
        fn cert_with(oid: &[u8]) -> Vec<u8> {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            alg.extend_from_slice(&[0x05, 0x00]);
            let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x01]; // tbs: SEQUENCE { INTEGER 1 }
            body.push(0x30);
            body.push(alg.len() as u8);
            body.extend(alg);
            body.extend_from_slice(&[0x03, 0x02, 0x00, 0xAA]);
            // Long-form length on the outer SEQUENCE, to exercise it.
            let mut out = vec![0x30, 0x81, body.len() as u8];
            out.extend(body);
            out
        }
        let rsa = |last: u8| cert_with(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, last]);
        let ecdsa = |last: u8| cert_with(&[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, last]);
        assert_eq!(signature_hash(&rsa(0x05)), Some(CertHash::Sha256)); // sha1 → sha256
        assert_eq!(signature_hash(&rsa(0x04)), Some(CertHash::Sha256)); // md5 → sha256
        assert_eq!(signature_hash(&rsa(0x0B)), Some(CertHash::Sha256));
        assert_eq!(signature_hash(&rsa(0x0C)), Some(CertHash::Sha384));
        assert_eq!(signature_hash(&rsa(0x0D)), Some(CertHash::Sha512));
        assert_eq!(signature_hash(&rsa(0x0E)), Some(CertHash::Sha224));
        assert_eq!(signature_hash(&rsa(0x0A)), None); // RSASSA-PSS
        assert_eq!(signature_hash(&ecdsa(0x02)), Some(CertHash::Sha256));
        assert_eq!(signature_hash(&ecdsa(0x03)), Some(CertHash::Sha384));
        assert_eq!(signature_hash(&ecdsa(0x04)), Some(CertHash::Sha512));
        assert_eq!(
            signature_hash(&cert_with(&[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01])),
            Some(CertHash::Sha256)
        );
        assert_eq!(signature_hash(&cert_with(&[0x2B, 0x65, 0x70])), None); // Ed25519
        assert_eq!(end_point_hash(&rsa(0x0C)).map(|h| h.len()), Some(48));

        // Truncated or garbage input never panics.
        let good = rsa(0x0B);
        for n in 0..good.len() {
            assert_eq!(signature_hash(&good[..n]), None, "{n}");
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let v: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
            let _ = signature_hash(&v);
        }
        assert_eq!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der_tlv(&[0x30, 0x80]), None);
    }

    // -----------------------------------------------------------------------------------------
    // Both clients against a scripted server: SSLRequest answer, TLS with the test certificate,
    // then a trust-authenticated startup.
    // -----------------------------------------------------------------------------------------

    #[derive(Clone, Copy)]
    enum Answer {
        /// 'S', then TLS.
        Tls,
        /// 'N': no TLS.
        Refuse,
    }

    async fn serve_startup<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
        let Ok(len) = s.read_u32().await else { return };
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut out = Vec::new();
        let mut push = |tag: u8, body: &[u8]| {
            out.push(tag);
            out.extend(((body.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(body);
        };
        push(b'R', &0i32.to_be_bytes());
        push(b'S', b"server_version\x0015.0\x00");
        push(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]);
        push(b'Z', b"I");
        if s.write_all(&out).await.is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    }

    /// Serves connections until dropped; returns the port.
    async fn fake_server(answer: Answer) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cert = CertificateDer::from_pem_slice(SERVER_CERT.as_bytes()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let handle = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 8];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    if head != [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F] {
                        // A plaintext startup message (sslmode=disable, or a fallback).
                        serve_plain_after(head, s).await;
                        return;
                    }
                    match answer {
                        Answer::Refuse => {
                            if s.write_all(b"N").await.is_ok() {
                                serve_startup(s).await;
                            }
                        }
                        Answer::Tls => {
                            if s.write_all(b"S").await.is_err() {
                                return;
                            }
                            if let Ok(tls) = acceptor.accept(s).await {
                                serve_startup(tls).await;
                            }
                        }
                    }
                });
            }
        });
        (port, handle)
    }

    /// Serves a plaintext startup whose first 8 bytes were already read.
    async fn serve_plain_after(head: [u8; 8], s: tokio::net::TcpStream) {
        let (r, w) = s.into_split();
        serve_startup(tokio::io::join(AsyncReadExt::chain(&head[..], r), w)).await;
    }

    struct Roots {
        _dir: tempfile::TempDir,
        ca: String,
        other: String,
    }

    fn roots() -> Roots {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let other = dir.path().join("other.pem");
        std::fs::write(&ca, CA).unwrap();
        std::fs::write(&other, OTHER_CA).unwrap();
        Roots {
            ca: ca.display().to_string(),
            other: other.display().to_string(),
            _dir: dir,
        }
    }

    /// Connects both clients with `params` appended to `postgres://u@{host}:{port}/db?`.
    /// Returns, per client, whether it is encrypted (replication client) / connected (SQL).
    async fn both(host: &str, port: u16, params: &str) -> (Result<bool>, Result<()>) {
        let url = format!("postgres://u@{host}:{port}/db?connect_timeout=5&{params}");
        let src = match parse_url(&url) {
            Ok(s) => s,
            Err(e) => return (Err(e), Err(Error::config("unparsable"))),
        };
        let repl = match ReplicationClient::connect(&src, "tls-test").await {
            Ok(c) => {
                let tls = c.is_tls();
                let _ = c.close().await;
                Ok(tls)
            }
            Err(e) => Err(e),
        };
        let sql = sql_connect(&src, "tls-test").await.map(drop);
        (repl, sql)
    }

    fn assert_config_error(r: &Result<impl std::fmt::Debug>, needles: &[&str]) {
        let e = match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Config, "{}", e.one_line());
        for n in needles {
            assert!(e.one_line().contains(n), "{n:?} not in: {}", e.one_line());
        }
    }

    #[tokio::test]
    async fn verify_modes_against_a_scripted_server() {
        let r = roots();
        let (port, server) = fake_server(Answer::Tls).await;

        // verify-full: right CA and the certificate's name.
        let (repl, sql) = both(
            "localhost",
            port,
            &format!("sslmode=verify-full&sslrootcert={}", r.ca),
        )
        .await;
        assert!(repl.unwrap(), "replication connection is not TLS");
        sql.unwrap();

        // verify-full by IP address: the certificate names only localhost.
        let (repl, sql) = both(
            "127.0.0.1",
            port,
            &format!("sslmode=verify-full&sslrootcert={}", r.ca),
        )
        .await;
        for e in [repl.map(drop), sql] {
            assert_config_error(
                &e,
                &[
                    "could not be verified",
                    "not valid for host \"127.0.0.1\"",
                    "verify-ca",
                ],
            );
        }

        // verify-ca does not check the name.
        let (repl, sql) = both(
            "127.0.0.1",
            port,
            &format!("sslmode=verify-ca&sslrootcert={}", r.ca),
        )
        .await;
        assert!(repl.unwrap());
        sql.unwrap();

        // Wrong CA: verify-ca, verify-full, and require with a root certificate (libpq's rule).
        for mode in ["verify-ca", "verify-full", "require"] {
            let (repl, sql) = both(
                "localhost",
                port,
                &format!("sslmode={mode}&sslrootcert={}", r.other),
            )
            .await;
            for e in [repl.map(drop), sql] {
                assert_config_error(
                    &e,
                    &["could not be verified", "unknown issuer", "sslrootcert="],
                );
            }
        }

        // require without a root certificate encrypts without checking.
        let (repl, sql) = both("127.0.0.1", port, "sslmode=require").await;
        assert!(repl.unwrap());
        sql.unwrap();

        // prefer (the default) uses TLS when offered...
        let (repl, sql) = both("127.0.0.1", port, "").await;
        assert!(repl.unwrap());
        sql.unwrap();
        // ...and falls back to plaintext when the handshake fails, as libpq does.
        let (repl, sql) = both(
            "localhost",
            port,
            &format!("sslmode=prefer&sslrootcert={}", r.other),
        )
        .await;
        assert!(!repl.unwrap(), "expected the plaintext fallback");
        sql.unwrap();

        // disable never sends an SSLRequest.
        let (repl, sql) = both("127.0.0.1", port, "sslmode=disable").await;
        assert!(!repl.unwrap());
        sql.unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn a_server_without_tls() {
        let (port, server) = fake_server(Answer::Refuse).await;
        for mode in ["require", "verify-full"] {
            let (repl, sql) = both("localhost", port, &format!("sslmode={mode}")).await;
            for e in [repl.map(drop), sql] {
                assert_config_error(&e, &["does not accept TLS", "sslmode=prefer"]);
            }
        }
        let (repl, sql) = both("localhost", port, "sslmode=prefer").await;
        assert!(!repl.unwrap());
        sql.unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn channel_binding_require_needs_tls() {
        let (port, server) = fake_server(Answer::Refuse).await;
        let (repl, sql) = both("localhost", port, "sslmode=disable&channel_binding=require").await;
        assert_config_error(&repl, &["channel_binding=require needs TLS"]);
        // The server accepts without authentication (trust): that is not channel binding either.
        assert_config_error(&sql, &["channel binding"]);
        let (repl, _) = both("localhost", port, "sslmode=prefer&channel_binding=require").await;
        assert_config_error(&repl, &["channel_binding=require", "without SCRAM"]);
        server.abort();
    }
}
