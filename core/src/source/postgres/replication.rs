//! A thin PostgreSQL streaming-replication client (`replication=database`).
//!
//! `tokio-postgres` has no replication mode, so this speaks the wire protocol itself on top of
//! `postgres_protocol::message::frontend` (messages we send) and a small hand-written parser for
//! what the server sends (the backend parser of `postgres-protocol` does not know
//! `CopyBothResponse`). Scope: TLS (SSLRequest or direct, see [`super::tls`]), startup with
//! pinned session settings, trust / cleartext / MD5 / SCRAM-SHA-256 / SCRAM-SHA-256-PLUS
//! (channel binding) authentication, the simple-query protocol (replication commands and
//! `SHOW`), slot management and the CopyBoth stream of `START_REPLICATION ... LOGICAL`.
//!
//! Contracts that callers rely on:
//! - [`ReplicationStream::next`] is cancel-safe: bytes are buffered in the stream and only
//!   complete frames are consumed, so dropping the future (e.g. in `tokio::select!`) loses nothing.
//! - Nothing the server sends can panic this module: malformed input becomes an [`Error`].
//! - Frames of any size up to 1 GiB (PostgreSQL's own limit) are read without quadratic copying:
//!   the buffer is grown once to the announced frame size.
//! - Errors carry an [`ErrorKind`]: connection loss is `Transient`; authentication, privileges,
//!   missing slots/publications and server settings are `Config` with a message saying what to
//!   change. Server errors keep a [`ServerError`] (SQLSTATE, detail, hint) as their source.
//!
//! TLS follows the same `sslmode` / `sslrootcert` rules as the SQL client ([`super::tls`]): the
//! client sends an SSLRequest (or starts TLS directly with `sslnegotiation=direct`) and wraps the
//! socket in a `tokio-rustls` stream. Certificate problems are `Config` errors naming the fix.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connect::ConnectSettings;
use super::tls::{SslMode, TlsConnector};
use crate::error::{Error, ErrorKind, Result};
use crate::position::Lsn;

/// Session settings pinned at startup: the text format of values in pgoutput follows them.
const PINNED_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601 -c bytea_output=hex";

/// Largest accepted value of a message's length field. PostgreSQL cannot build a message body
/// larger than 1 GiB - 1 (`MaxAllocSize`); the margin covers the CopyData / XLogData headers.
const MAX_MESSAGE_LEN: usize = (1 << 30) + 1024;

/// Free buffer space ensured before each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Used when the configuration does not set `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`ReplicationStream::close`] waits for the server to finish the COPY.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The byte stream under a connection: TCP, a Unix socket, TLS over TCP.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

type BoxTransport = Box<dyn Transport>;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (a 64-bit number, kept as PostgreSQL prints it).
    pub systemid: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush location.
    pub xlogpos: Lsn,
    /// The database connected to (`None` only for physical replication connections).
    pub dbname: Option<String>,
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The first LSN the slot will decode: changes committed after it are streamed, changes
    /// before it are in the exported snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot (`SET TRANSACTION SNAPSHOT '<name>'`), from
    /// [`ReplicationClient::create_slot_exporting`]; empty from [`ReplicationClient::create_slot`].
    /// Valid until the replication connection runs its next command.
    pub snapshot_name: String,
    /// The output plugin, as reported by the server.
    pub output_plugin: Option<String>,
}

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: for logical replication, one pgoutput message in `data`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        /// Server clock when sent, microseconds since the Unix epoch.
        server_time: i64,
        data: Bytes,
    },
    /// A keepalive. When `reply_requested`, answer with [`ReplicationStream::send_status`] well
    /// within `wal_sender_timeout`, or the server drops the connection.
    PrimaryKeepalive {
        wal_end: Lsn,
        /// Server clock when sent, microseconds since the Unix epoch.
        server_time: i64,
        reply_requested: bool,
    },
}

/// An `ErrorResponse` from the server, kept as the source of the [`Error`] it was mapped to
/// (reach it with `std::error::Error::source` and `downcast_ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity when the server sent it (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    /// The SQLSTATE code, e.g. `42704`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)
    }
}

impl std::error::Error for ServerError {}

// ---------------------------------------------------------------------------------------------
// Small helpers: quoting, errors, parsing
// ---------------------------------------------------------------------------------------------

/// Quotes an identifier for SQL and for the replication grammar (`"a""b"`).
fn quote_ident(s: &str) -> Result<String> {
    reject_nul(s)?;
    Ok(format!("\"{}\"", s.replace('"', "\"\"")))
}

/// Quotes a string literal. Standard-conforming form only (`'it''s'`): the replication
/// grammar does not understand `E'...'`, and backslashes are not special in either grammar
/// with `standard_conforming_strings = on` (the default since PostgreSQL 9.1).
fn quote_literal(s: &str) -> Result<String> {
    reject_nul(s)?;
    Ok(format!("'{}'", s.replace('\'', "''")))
}

fn reject_nul(s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::config(format!(
            "{s:?} contains a NUL character, which PostgreSQL cannot accept"
        )));
    }
    Ok(())
}

fn protocol(what: impl fmt::Display) -> Error {
    Error::fatal(format!("PostgreSQL protocol violation: {what}"))
}

fn io_lost(peer: &str, e: std::io::Error) -> Error {
    Error::with_source(
        ErrorKind::Transient,
        format!("connection to PostgreSQL at {peer} lost"),
        e,
    )
}

/// PostgreSQL's major version from `server_version` (`"15.4 (Debian ...)"`, `"9.6.3"`, `"17beta1"`).
fn major_version(server_version: &str) -> Option<u32> {
    let digits: String = server_version
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn now_pg_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    i64::try_from(unix)
        .unwrap_or(i64::MAX)
        .saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

/// A bounds-checked reader over a message body; every failure is a protocol error naming `what`.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn short(&self) -> Error {
        protocol(format!("truncated {} message", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string (lossy UTF-8).
    fn cstr(&mut self) -> Result<String> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.short())?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Parses the fields of an `ErrorResponse` / `NoticeResponse`. Lenient: never fails.
fn parse_fields(body: &[u8]) -> ServerError {
    let mut e = ServerError {
        severity: String::new(),
        code: "XX000".to_string(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut localized_severity = String::new();
    let mut r = Reader::new(body, "ErrorResponse");
    while let Ok(field) = r.u8() {
        if field == 0 {
            break;
        }
        let Ok(value) = r.cstr() else { break };
        match field {
            b'S' => localized_severity = value,
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    if e.message.is_empty() {
        e.message = "(the server sent no message)".to_string();
    }
    e
}

/// What the error mapping needs to know to say what to do.
#[derive(Debug, Clone)]
struct ErrorContext {
    user: String,
    /// The pg_hba.conf line that would admit this connection.
    hba_line: String,
}

/// Maps a server error to an [`Error`] whose kind tells the caller whether to retry and whose
/// message says what to change.
fn server_error(e: ServerError, cx: &ErrorContext) -> Error {
    let code = e.code.as_str();
    let msg = e.message.as_str();
    let user_ident = quote_ident(&cx.user).unwrap_or_else(|_| cx.user.clone());
    let (kind, advice): (ErrorKind, Option<String>) = match code {
        "28P01" => (
            ErrorKind::Config,
            Some(format!("check the password configured for user {:?} in the source connection settings", cx.user)),
        ),
        "28000" if msg.contains("pg_hba.conf") => (
            ErrorKind::Config,
            Some(format!(
                "allow replication connections: add the line `{}` to pg_hba.conf and reload PostgreSQL (SELECT pg_reload_conf())",
                cx.hba_line
            )),
        ),
        "28000" | "3D000" | "42P01" | "42602" | "22023" | "0A000" | "42710" => (ErrorKind::Config, None),
        "42501" if msg.contains("replication") || msg.contains("walsender") => (
            ErrorKind::Config,
            Some(format!("the role needs the REPLICATION attribute: run `ALTER ROLE {user_ident} REPLICATION;` as a superuser")),
        ),
        "42501" => (ErrorKind::Config, Some(format!("grant role {:?} the missing privilege", cx.user))),
        "55000" if msg.contains("wal_level") => (
            ErrorKind::Config,
            Some("set `wal_level = logical` in postgresql.conf and restart PostgreSQL".to_string()),
        ),
        "55000" => (ErrorKind::Config, None),
        "55006" => (
            ErrorKind::Transient,
            Some("another process uses the replication slot; retry once it has gone (or terminate it with pg_terminate_backend)".to_string()),
        ),
        "42704" if msg.contains("replication slot") => (
            ErrorKind::Config,
            Some("create the slot first, or check the configured slot name".to_string()),
        ),
        "42704" if msg.contains("publication") => (
            ErrorKind::Config,
            Some("create the publication first (CREATE PUBLICATION ... FOR TABLE ...), or check its name".to_string()),
        ),
        "42704" => (ErrorKind::Config, None),
        "53400" => (
            ErrorKind::Config,
            Some("raise max_replication_slots / max_wal_senders, or drop unused slots".to_string()),
        ),
        "53300" => (
            ErrorKind::Transient,
            Some("too many connections or WAL senders now; raise max_connections / max_wal_senders if this persists".to_string()),
        ),
        "57P04" => (ErrorKind::Config, None),
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c.starts_with("40") => {
            (ErrorKind::Transient, None)
        }
        "58P01" | "58P02" | "58030" => (ErrorKind::Transient, None),
        _ => (ErrorKind::Fatal, None),
    };
    let mut text = format!("PostgreSQL: {e}");
    if let Some(d) = &e.detail {
        text.push_str(&format!(" ({d})"));
    }
    match advice {
        Some(a) => text.push_str(&format!(": {a}")),
        None => {
            if let Some(h) = &e.hint {
                text.push_str(&format!(": {h}"));
            }
        }
    }
    Error::with_source(kind, text, e)
}

/// One backend message: its tag and body (without the length field).
struct Frame {
    tag: u8,
    body: Bytes,
}

// ---------------------------------------------------------------------------------------------
// The connection: framing, buffering, writing
// ---------------------------------------------------------------------------------------------

/// A protocol connection over any transport. Reads accumulate in `rbuf` and only whole frames
/// leave it, which is what makes [`ReplicationStream::next`] cancel-safe. Writes go through
/// `wbuf`, whose unwritten rest survives a cancelled write and is sent before anything else.
struct Conn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// `host:port` or the socket path, for messages.
    peer: String,
    cx: ErrorContext,
    params: HashMap<String, String>,
    backend_pid: Option<i32>,
    /// A simple-query command was sent and its `ReadyForQuery` not read yet: a cancelled
    /// command leaves the protocol in an unknown place, so later commands are refused.
    busy: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    fn new(io: S, peer: String, cx: ErrorContext) -> Self {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(256),
            peer,
            cx,
            params: HashMap::new(),
            backend_pid: None,
            busy: false,
        }
    }

    /// Takes one complete frame out of the read buffer, if there is one. Synchronous, so it
    /// cannot be interrupted; when the frame is incomplete, grows the buffer once to its size.
    fn try_frame(&mut self) -> Result<Option<Frame>> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.rbuf[0];
        let len =
            u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if len < 4 {
            return Err(protocol(format!(
                "message {:?} has invalid length {len}",
                char::from(tag)
            )));
        }
        if len > MAX_MESSAGE_LEN {
            return Err(Error::data(format!(
                "PostgreSQL sent a {:?} message of {len} bytes, above the 1 GiB limit of the replication client",
                char::from(tag)
            )));
        }
        let total = len + 1;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        let mut frame = self.rbuf.split_to(total);
        let body = frame.split_off(5).freeze();
        Ok(Some(Frame { tag, body }))
    }

    /// Reads more bytes into the buffer. Cancel-safe: the bytes either land in `rbuf` or
    /// were not read. Returns 0 at end of stream.
    async fn read_more(&mut self) -> Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        self.io
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| io_lost(&self.peer, e))
    }

    /// The next frame; end of stream is a transient error.
    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            if self.read_more().await? == 0 {
                return Err(Error::transient(format!(
                    "connection to PostgreSQL at {} closed by the server unexpectedly",
                    self.peer
                )));
            }
        }
    }

    /// Writes all of `wbuf` (the rest of any earlier cancelled write first) and flushes.
    async fn flush(&mut self) -> Result<()> {
        while !self.wbuf.is_empty() {
            let n = self
                .io
                .write_buf(&mut self.wbuf)
                .await
                .map_err(|e| io_lost(&self.peer, e))?;
            if n == 0 {
                return Err(Error::transient(format!(
                    "connection to PostgreSQL at {} closed while writing",
                    self.peer
                )));
            }
        }
        self.io.flush().await.map_err(|e| io_lost(&self.peer, e))
    }

    fn server_error(&self, body: &[u8]) -> Error {
        server_error(parse_fields(body), &self.cx)
    }

    fn notice(&self, body: &[u8]) {
        let n = parse_fields(body);
        match n.severity.as_str() {
            "WARNING" => {
                tracing::warn!(peer = %self.peer, code = %n.code, "PostgreSQL: {}", n.message)
            }
            _ => tracing::info!(peer = %self.peer, code = %n.code, "PostgreSQL: {}", n.message),
        }
    }

    fn parameter_status(&mut self, body: &[u8]) -> Result<()> {
        let mut r = Reader::new(body, "ParameterStatus");
        let name = r.cstr()?;
        let value = r.cstr()?;
        tracing::debug!(peer = %self.peer, %name, %value, "PostgreSQL parameter");
        self.params.insert(name, value);
        Ok(())
    }

    /// Startup and authentication, up to the first `ReadyForQuery`.
    async fn startup(&mut self, p: &StartupParams<'_>, tls: Option<&TlsSession>) -> Result<()> {
        let options = match p.extra_options {
            Some(o) if !o.trim().is_empty() => format!("{o} {PINNED_OPTIONS}"),
            _ => PINNED_OPTIONS.to_string(),
        };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", p.user),
            ("replication", "database"),
            ("application_name", p.application_name),
            ("client_encoding", "UTF8"),
            ("options", &options),
        ];
        if let Some(db) = p.dbname {
            params.push(("database", db));
        }
        for (k, v) in &params {
            reject_nul(k)?;
            reject_nul(v)?;
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid startup parameters", e))?;
        self.flush().await?;
        self.authenticate(p, tls).await?;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'S' => self.parameter_status(&f.body)?,
                b'K' => {
                    let mut r = Reader::new(&f.body, "BackendKeyData");
                    self.backend_pid = Some(r.i32()?);
                }
                b'N' => self.notice(&f.body),
                b'E' => return Err(self.server_error(&f.body)),
                b'Z' => return Ok(()),
                t => {
                    return Err(protocol(format!(
                        "unexpected message {:?} during startup",
                        char::from(t)
                    )));
                }
            }
        }
    }

    async fn authenticate(
        &mut self,
        p: &StartupParams<'_>,
        tls: Option<&TlsSession>,
    ) -> Result<()> {
        let peer = self.peer.clone();
        // channel_binding=require: every way of authenticating but SCRAM-SHA-256-PLUS is refused.
        let unbound = |how: &str| {
            Error::config(format!(
                "channel_binding=require, but PostgreSQL at {peer} {how}: channel binding needs TLS \
                 (sslmode=require or stronger) and a SCRAM-SHA-256 password for user {:?}; or use channel_binding=prefer",
                p.user
            ))
        };
        let require_binding = p.channel_binding == CbPolicy::Require;
        // tls-server-end-point data when the session can be bound.
        let binding = match (tls, p.channel_binding) {
            (_, CbPolicy::Disable) | (None, _) => None,
            (Some(t), _) => t.end_point.clone(),
        };
        let mut bound = false;
        let need_password = |method: &str| {
            p.password.ok_or_else(|| {
                Error::config(format!(
                    "PostgreSQL at {peer} asks for {method} authentication of user {:?}, but no password is configured",
                    p.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {}
                b'E' => return Err(self.server_error(&f.body)),
                b'N' => {
                    self.notice(&f.body);
                    continue;
                }
                t => {
                    return Err(protocol(format!(
                        "unexpected message {:?} during authentication",
                        char::from(t)
                    )));
                }
            }
            let mut r = Reader::new(&f.body, "Authentication");
            match r.i32()? {
                0 => {
                    if require_binding && !bound {
                        return Err(unbound(
                            "accepted the connection without SCRAM authentication",
                        ));
                    }
                    return Ok(());
                }
                3 => {
                    if require_binding {
                        return Err(unbound("asks for a cleartext password"));
                    }
                    let pw = need_password("cleartext password")?;
                    frontend::password_message(pw, &mut self.wbuf).map_err(|e| {
                        Error::with_source(ErrorKind::Config, "invalid password", e)
                    })?;
                }
                5 => {
                    if require_binding {
                        return Err(unbound("asks for an MD5 password"));
                    }
                    let pw = need_password("MD5 password")?;
                    let salt = r.array::<4>()?;
                    let hash = md5_hash(p.user.as_bytes(), pw, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(|e| {
                        Error::with_source(ErrorKind::Config, "invalid password", e)
                    })?;
                }
                10 => {
                    let pw = need_password("SCRAM-SHA-256")?;
                    let mut offered = Vec::new();
                    while let Ok(m) = r.cstr() {
                        if m.is_empty() {
                            break;
                        }
                        offered.push(m);
                    }
                    let plus = offered.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
                    let plain = offered.iter().any(|m| m == sasl::SCRAM_SHA_256);
                    // As libpq: SCRAM-SHA-256-PLUS when offered and we have binding data; else
                    // SCRAM-SHA-256, telling the server whether we could have bound ("y,,": a
                    // server that offered PLUS would then detect a downgrade) or not ("n,,").
                    let (mechanism, cb) = match (&binding, plus, plain) {
                        (Some(data), true, _) => (
                            sasl::SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(data.clone()),
                        ),
                        (Some(_), false, true) => {
                            (sasl::SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        (None, _, true) => (sasl::SCRAM_SHA_256, ChannelBinding::unsupported()),
                        _ => {
                            return Err(Error::config(format!(
                                "PostgreSQL offers SASL mechanisms {offered:?}; the replication client supports {} \
                                 (and {} over TLS)",
                                sasl::SCRAM_SHA_256,
                                sasl::SCRAM_SHA_256_PLUS
                            )));
                        }
                    };
                    if require_binding && mechanism != sasl::SCRAM_SHA_256_PLUS {
                        return Err(unbound(&match (tls, plus) {
                            (None, _) => "is connected without TLS".to_string(),
                            (Some(_), false) => "does not offer SCRAM-SHA-256-PLUS".to_string(),
                            (Some(_), true) => {
                                "presented a certificate whose signature algorithm gives no \
                                                tls-server-end-point hash (e.g. Ed25519, RSA-PSS)"
                                    .to_string()
                            }
                        }));
                    }
                    bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                    tracing::debug!(peer = %self.peer, mechanism, "SCRAM authentication");
                    let s = ScramSha256::new(pw, cb);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
                        .map_err(|e| {
                            Error::with_source(ErrorKind::Fatal, "SCRAM: cannot encode message", e)
                        })?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASLContinue without SASL"))?;
                    s.update(r.rest()).map_err(|e| {
                        Error::with_source(ErrorKind::Fatal, "SCRAM authentication failed", e)
                    })?;
                    // `update` succeeded, so the state machine has a client-final message.
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(|e| {
                        Error::with_source(ErrorKind::Fatal, "SCRAM: cannot encode message", e)
                    })?;
                }
                12 => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| protocol("SASLFinal without SASL"))?;
                    s.finish(r.rest()).map_err(|e| {
                        Error::with_source(
                            ErrorKind::Config,
                            "SCRAM authentication failed: the server's proof is invalid (wrong server?)",
                            e,
                        )
                    })?;
                    continue;
                }
                2 | 6 | 7 | 8 | 9 => {
                    return Err(Error::config(format!(
                        "PostgreSQL at {} asks for Kerberos/GSSAPI/SSPI/SCM authentication, which the replication client does not support: \
                         use scram-sha-256 for the replication entry in pg_hba.conf (`{}`)",
                        self.peer, self.cx.hba_line
                    )));
                }
                other => return Err(protocol(format!("unknown authentication request {other}"))),
            }
            self.flush().await?;
        }
    }

    /// Sends one simple query and collects text rows until `ReadyForQuery`. A server error is
    /// returned after `ReadyForQuery`, so the connection stays usable.
    async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.begin_command()?;
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid query text", e))?;
        self.busy = true;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'T' | b'C' | b'I' => {}
                b'D' => rows.push(parse_data_row(&f.body)?),
                b'E' => error = Some(self.server_error(&f.body)),
                b'N' => self.notice(&f.body),
                b'S' => self.parameter_status(&f.body)?,
                b'Z' => {
                    self.busy = false;
                    break;
                }
                b'G' | b'H' | b'W' => {
                    return Err(Error::fatal(format!(
                        "{sql:?} started a COPY, which simple_query does not handle (use start_replication); the connection is now unusable"
                    )));
                }
                t => {
                    return Err(protocol(format!(
                        "unexpected message {:?} in a query response",
                        char::from(t)
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    fn begin_command(&self) -> Result<()> {
        if self.busy {
            return Err(Error::fatal(
                "an earlier command on this replication connection was cancelled midway; reconnect",
            ));
        }
        Ok(())
    }
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            row.push(None);
            continue;
        }
        let raw = r.take(len as usize)?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| Error::data("PostgreSQL sent a text column that is not UTF-8"))?;
        row.push(Some(s.to_string()));
    }
    Ok(row)
}

/// Parses the payload of a CopyData message of the replication stream.
fn parse_copy_data(body: Bytes) -> Result<Option<ReplicationMessage>> {
    let Some(&kind) = body.first() else {
        return Err(protocol("empty CopyData message in the replication stream"));
    };
    match kind {
        b'w' => {
            let mut r = Reader::new(&body[1..], "XLogData");
            let wal_start = Lsn(r.u64()?);
            let wal_end = Lsn(r.u64()?);
            let time = r.i64()?;
            Ok(Some(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time: time.saturating_add(PG_EPOCH_OFFSET_MICROS),
                data: body.slice(25..),
            }))
        }
        b'k' => {
            let mut r = Reader::new(&body[1..], "PrimaryKeepalive");
            let wal_end = Lsn(r.u64()?);
            let time = r.i64()?;
            let reply = r.u8()?;
            Ok(Some(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                server_time: time.saturating_add(PG_EPOCH_OFFSET_MICROS),
                reply_requested: reply != 0,
            }))
        }
        other => {
            tracing::warn!(kind = %char::from(other), len = body.len(), "skipping unknown replication message");
            Ok(None)
        }
    }
}

struct StartupParams<'a> {
    user: &'a str,
    password: Option<&'a [u8]>,
    dbname: Option<&'a str>,
    application_name: &'a str,
    extra_options: Option<&'a str>,
    channel_binding: CbPolicy,
}

/// `channel_binding` of the connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbPolicy {
    Disable,
    Prefer,
    Require,
}

/// What the authentication needs to know about a TLS session.
#[derive(Debug, Clone)]
struct TlsSession {
    /// `tls-server-end-point` channel binding data (`None`: the certificate gives none).
    end_point: Option<Vec<u8>>,
}

// ---------------------------------------------------------------------------------------------
// ReplicationClient
// ---------------------------------------------------------------------------------------------

/// A replication connection (`replication=database`) in command mode.
///
/// Methods take `&mut self` and run one command each; they are *not* cancel-safe: a command
/// whose future is dropped midway leaves the connection unusable (later commands fail with a
/// fatal error asking to reconnect).
pub struct ReplicationClient {
    conn: Conn<BoxTransport>,
    tls: bool,
}

impl fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("peer", &self.conn.peer)
            .field("backend_pid", &self.conn.backend_pid)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

enum Target {
    Tcp {
        /// Where to connect: `hostaddr` if given, else the host.
        addr: String,
        port: u16,
        /// The name the TLS certificate is checked against (the host, else `hostaddr`).
        tls_name: String,
    },
    #[cfg(unix)]
    Unix { path: std::path::PathBuf },
}

/// Opens the TCP connection; returns it and the pg_hba.conf line that would admit it.
async fn tcp_connect(
    addr: &str,
    port: u16,
    peer: &str,
    user: &str,
) -> Result<(tokio::net::TcpStream, String)> {
    let s = tokio::net::TcpStream::connect((addr, port))
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Transient,
                format!("cannot connect to PostgreSQL at {peer} (is it running and reachable?)"),
                e,
            )
        })?;
    s.set_nodelay(true).map_err(|e| io_lost(peer, e))?;
    let hba = match s.local_addr() {
        Ok(a) if a.is_ipv4() => format!("host replication {user} {}/32 scram-sha-256", a.ip()),
        Ok(a) => format!("host replication {user} {}/128 scram-sha-256", a.ip()),
        Err(_) => format!("host replication {user} <client address> scram-sha-256"),
    };
    Ok((s, hba))
}

/// Negotiates TLS on a fresh TCP connection: SSLRequest (unless `direct`), then the handshake.
/// With `sslmode=prefer`, a server that declines leaves the connection in plaintext.
async fn start_tls(
    mut tcp: tokio::net::TcpStream,
    connector: &TlsConnector,
    tls_name: &str,
    mode: SslMode,
    direct: bool,
    peer: &str,
) -> Result<(BoxTransport, Option<TlsSession>)> {
    if !direct {
        let mut request = BytesMut::with_capacity(8);
        frontend::ssl_request(&mut request);
        tcp.write_all(&request)
            .await
            .map_err(|e| io_lost(peer, e))?;
        // Exactly one byte: anything the server sent after 'S' must go through TLS
        // (CVE-2021-23222), so nothing is read ahead here.
        let answer = tcp.read_u8().await.map_err(|e| io_lost(peer, e))?;
        match answer {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => return Ok((Box::new(tcp), None)),
            b'N' => {
                return Err(Error::config(format!(
                    "PostgreSQL at {peer} does not accept TLS connections (ssl = off): turn ssl on in the server's \
                     configuration, or use sslmode=prefer or sslmode=disable"
                )));
            }
            b'E' => {
                return Err(Error::config(format!(
                    "PostgreSQL at {peer} answered the TLS request with an error: the server is too old for TLS \
                     negotiation; use sslmode=disable"
                )));
            }
            other => {
                return Err(protocol(format!(
                    "unexpected answer {other:#04x} to SSLRequest from {peer}"
                )));
            }
        }
    }
    let stream = connector
        .handshake(tcp, tls_name)
        .await
        .map_err(|e| e.context(format!("TLS to PostgreSQL at {peer}")))?;
    let end_point = super::tls::tls_server_end_point(&stream);
    Ok((Box::new(stream), Some(TlsSession { end_point })))
}

impl ReplicationClient {
    /// Connects with `replication=database` and authenticates (trust, cleartext, MD5,
    /// SCRAM-SHA-256, SCRAM-SHA-256-PLUS over TLS).
    ///
    /// `settings` is a [`PgSource`](super::connect::PgSource) from
    /// [`parse_url`](super::connect::parse_url) (all TLS settings: `sslmode` up to `verify-full`,
    /// `sslrootcert`), or a bare `tokio_postgres::Config` (TLS per its `ssl_mode`, without
    /// certificate checks). From the `Config` it uses: the first host (TCP name, `hostaddr`, or a
    /// Unix socket directory) and its port (default 5432), user (required), password, dbname,
    /// options (prepended to the pinned settings, which win), `connect_timeout` (default 30 s,
    /// covers connect, TLS and authentication), `channel_binding`, `ssl_negotiation`. Pinned:
    /// `datestyle=ISO, timezone=UTC, extra_float_digits=3, intervalstyle=iso_8601,
    /// bytea_output=hex`, `client_encoding=UTF8`; `application_name` is the argument.
    ///
    /// TLS ([`super::tls`]): `sslmode=prefer` (the default) uses TLS when the server accepts it
    /// and falls back to plaintext when it declines or the handshake fails; `require` and stronger
    /// refuse plaintext. Unix-domain sockets never use TLS.
    pub async fn connect<C: ConnectSettings + ?Sized>(
        settings: &C,
        application_name: &str,
    ) -> Result<Self> {
        use tokio_postgres::config::{ChannelBinding as Cb, SslNegotiation};
        let config = settings.pg_config();
        let tls = settings.tls_settings();
        let channel_binding = match config.get_channel_binding() {
            Cb::Disable => CbPolicy::Disable,
            Cb::Require => CbPolicy::Require,
            _ => CbPolicy::Prefer,
        };
        let user = config
            .get_user()
            .ok_or_else(|| Error::config("the PostgreSQL connection settings have no user"))?;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let host_name = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Some(h.clone()),
            _ => None,
        };
        let target = match (config.get_hostaddrs().first(), config.get_hosts().first()) {
            (Some(addr), _) => Target::Tcp {
                addr: addr.to_string(),
                port,
                tls_name: host_name.unwrap_or_else(|| addr.to_string()),
            },
            (None, Some(tokio_postgres::config::Host::Tcp(h))) => Target::Tcp {
                addr: h.clone(),
                port,
                tls_name: h.clone(),
            },
            #[cfg(unix)]
            (None, Some(tokio_postgres::config::Host::Unix(dir))) => Target::Unix {
                path: dir.join(format!(".s.PGSQL.{port}")),
            },
            (None, None) => {
                return Err(Error::config(
                    "the PostgreSQL connection settings have no host",
                ));
            }
        };
        // TLS only over TCP (libpq ignores sslmode for Unix-domain sockets, too).
        let mode = match target {
            Target::Tcp { .. } => tls.mode,
            #[cfg(unix)]
            Target::Unix { .. } => SslMode::Disable,
        };
        let direct = config.get_ssl_negotiation() == SslNegotiation::Direct;
        if direct && mode == SslMode::Prefer {
            return Err(Error::config(
                "sslnegotiation=direct needs sslmode=require or stronger (there is no plaintext fallback)",
            ));
        }
        if channel_binding == CbPolicy::Require && mode == SslMode::Disable {
            return Err(Error::config(
                "channel_binding=require needs TLS: use sslmode=require, verify-ca or verify-full over TCP",
            ));
        }
        let connector = if mode == SslMode::Disable {
            None
        } else {
            tls.connector()?
        };
        let params = StartupParams {
            user,
            password: config.get_password(),
            dbname: config.get_dbname(),
            application_name,
            extra_options: config.get_options(),
            channel_binding,
        };
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let peer = match &target {
            Target::Tcp { addr, port, .. } => format!("{addr}:{port}"),
            #[cfg(unix)]
            Target::Unix { path } => path.display().to_string(),
        };
        let attempt = async {
            let (io, hba_line, session): (BoxTransport, String, Option<TlsSession>) = match &target
            {
                Target::Tcp {
                    addr,
                    port,
                    tls_name,
                } => {
                    let (tcp, hba) = tcp_connect(addr, *port, &peer, user).await?;
                    match &connector {
                        None => (Box::new(tcp), hba, None),
                        Some(c) => match start_tls(tcp, c, tls_name, mode, direct, &peer).await {
                            Ok((io, session)) => (io, hba, session),
                            Err(e) if mode == SslMode::Prefer => {
                                tracing::warn!(
                                    %peer,
                                    error = %e.one_line(),
                                    "TLS to PostgreSQL failed with sslmode=prefer: connecting without TLS"
                                );
                                let (tcp, hba) = tcp_connect(addr, *port, &peer, user).await?;
                                (Box::new(tcp), hba, None)
                            }
                            Err(e) => return Err(e),
                        },
                    }
                }
                #[cfg(unix)]
                Target::Unix { path } => {
                    let s = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                        Error::with_source(
                            ErrorKind::Transient,
                            format!("cannot connect to PostgreSQL at {peer} (is it running, and is the socket directory right?)"),
                            e,
                        )
                    })?;
                    (
                        Box::new(s),
                        format!("local replication {user} scram-sha-256"),
                        None,
                    )
                }
            };
            Self::connect_with(io, peer.clone(), hba_line, &params, session.as_ref()).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::transient(format!(
                "timed out after {timeout:?} connecting to PostgreSQL at {peer}"
            ))),
        }
    }

    /// Startup over an already connected transport (TCP, Unix socket, TLS).
    async fn connect_with(
        io: BoxTransport,
        peer: String,
        hba_line: String,
        p: &StartupParams<'_>,
        tls: Option<&TlsSession>,
    ) -> Result<Self> {
        let cx = ErrorContext {
            user: p.user.to_string(),
            hba_line,
        };
        let mut conn = Conn::new(io, peer, cx);
        conn.startup(p, tls).await?;
        tracing::debug!(
            peer = %conn.peer,
            pid = ?conn.backend_pid,
            tls = tls.is_some(),
            server_version = ?conn.params.get("server_version"),
            "replication connection ready"
        );
        Ok(ReplicationClient {
            conn,
            tls: tls.is_some(),
        })
    }

    /// Whether the connection is encrypted with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server's `server_version` as reported at startup.
    pub fn server_version(&self) -> Option<&str> {
        self.parameter("server_version")
    }

    /// A run-time parameter reported by the server (`ParameterStatus`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.conn.params.get(name).map(String::as_str)
    }

    /// The PID of the walsender serving this connection.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        let systemid = col(0).ok_or_else(|| protocol("IDENTIFY_SYSTEM: no systemid"))?;
        let timeline = col(1)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| protocol("IDENTIFY_SYSTEM: missing or invalid timeline"))?;
        let xlogpos = parse_lsn(col(2), "IDENTIFY_SYSTEM xlogpos")?;
        Ok(SystemIdentity {
            systemid,
            timeline,
            xlogpos,
            dbname: col(3),
        })
    }

    /// Runs `sql` with the simple-query protocol and returns all rows (of all statements) as text
    /// columns. For replication commands and `SHOW`. A server error leaves the connection usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.conn.simple_query(sql).await
    }

    /// `CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT 'export')` (`EXPORT_SNAPSHOT`
    /// before PostgreSQL 15). The returned `snapshot_name` is valid only until this connection
    /// runs its next command: import it in every copy worker first, then start replication.
    pub async fn create_slot_exporting(&mut self, slot: &str) -> Result<CreatedSlot> {
        let created = self.create_slot_inner(slot, true).await?;
        if created.snapshot_name.is_empty() {
            return Err(protocol(
                "CREATE_REPLICATION_SLOT ... export returned no snapshot name",
            ));
        }
        Ok(created)
    }

    /// `CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT 'nothing')`
    /// (`NOEXPORT_SNAPSHOT` before PostgreSQL 15).
    pub async fn create_slot(&mut self, slot: &str) -> Result<CreatedSlot> {
        self.create_slot_inner(slot, false).await
    }

    async fn create_slot_inner(&mut self, slot: &str, export: bool) -> Result<CreatedSlot> {
        let modern = self
            .server_version()
            .and_then(major_version)
            .is_none_or(|v| v >= 15);
        let snapshot = match (modern, export) {
            (true, true) => "(SNAPSHOT 'export')",
            (true, false) => "(SNAPSHOT 'nothing')",
            (false, true) => "EXPORT_SNAPSHOT",
            (false, false) => "NOEXPORT_SNAPSHOT",
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {snapshot}",
            quote_ident(slot)?
        );
        let rows = self
            .simple_query(&sql)
            .await
            .map_err(|e| e.context(format!("creating replication slot {slot:?}")))?;
        let row = rows
            .first()
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(CreatedSlot {
            slot_name: col(0).ok_or_else(|| protocol("CREATE_REPLICATION_SLOT: no slot_name"))?,
            consistent_point: parse_lsn(col(1), "CREATE_REPLICATION_SLOT consistent_point")?,
            snapshot_name: col(2).unwrap_or_default(),
            output_plugin: col(3),
        })
    }

    /// `DROP_REPLICATION_SLOT <slot> WAIT`: waits while another connection uses the slot.
    /// A missing slot is a config error (SQLSTATE 42704 in the source [`ServerError`]).
    pub async fn drop_slot(&mut self, slot: &str) -> Result<()> {
        let sql = format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot)?);
        self.simple_query(&sql)
            .await
            .map_err(|e| e.context(format!("dropping replication slot {slot:?}")))?;
        Ok(())
    }

    /// `START_REPLICATION SLOT <slot> LOGICAL <start> (proto_version 'N', publication_names
    /// '"<publication>"', messages 'true')`. `start` 0/0 means "from the slot's
    /// confirmed_flush_lsn"; the server never goes back before it anyway.
    pub async fn start_replication(
        self,
        slot: &str,
        start: Lsn,
        publication: &str,
        proto_version: u32,
    ) -> Result<ReplicationStream> {
        let version = proto_version.to_string();
        let publications = quote_ident(publication)?;
        let options = [
            ("proto_version", version.as_str()),
            ("publication_names", publications.as_str()),
            ("messages", "true"),
        ];
        self.start_replication_with_options(slot, start, &options)
            .await
    }

    /// `START_REPLICATION SLOT <slot> LOGICAL <start> (<name> '<value>', ...)` with any
    /// pgoutput options (e.g. `binary 'true'`, `streaming 'on'`). Values are quoted here;
    /// `publication_names` must already be a list of quoted identifiers.
    pub async fn start_replication_with_options(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream> {
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start}",
            quote_ident(slot)?
        );
        if !options.is_empty() {
            let mut parts = Vec::with_capacity(options.len());
            for (name, value) in options {
                parts.push(format!("{} {}", quote_ident(name)?, quote_literal(value)?));
            }
            sql.push_str(&format!(" ({})", parts.join(", ")));
        }
        let conn = &mut self.conn;
        conn.begin_command()?;
        frontend::query(&sql, &mut conn.wbuf)
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid query text", e))?;
        conn.busy = true;
        conn.flush().await?;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'E' => {
                    return Err(conn
                        .server_error(&f.body)
                        .context(format!("starting replication from slot {slot:?}")));
                }
                b'N' => conn.notice(&f.body),
                b'S' => conn.parameter_status(&f.body)?,
                t => {
                    return Err(protocol(format!(
                        "unexpected message {:?} in response to START_REPLICATION",
                        char::from(t)
                    )));
                }
            }
        }
        tracing::debug!(peer = %conn.peer, %slot, %start, "replication stream started");
        Ok(ReplicationStream {
            conn: self.conn,
            state: StreamState::Streaming,
            sent_copy_done: false,
        })
    }

    /// Ends the session politely (`Terminate`) and closes the connection.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let _ = self.conn.io.shutdown().await;
        Ok(())
    }
}

fn parse_lsn(v: Option<String>, what: &str) -> Result<Lsn> {
    let v = v.ok_or_else(|| protocol(format!("{what}: missing")))?;
    v.parse()
        .map_err(|_| protocol(format!("{what}: invalid LSN {v:?}")))
}

// ---------------------------------------------------------------------------------------------
// ReplicationStream
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Streaming,
    /// The server sent CopyDone: no more data; waiting for our CopyDone.
    ServerDone,
    /// The connection ended (clean close, error, or protocol failure).
    Ended,
}

/// The CopyBoth stream of `START_REPLICATION`.
///
/// Liveness: the server only sends keepalives when it wants a reply, so silence does not mean
/// a dead connection (TCP keepalives are not set: tokio has no setter and `socket2` is not a
/// dependency). To detect a dead server, send a status update with `reply_requested = true`
/// and expect a [`ReplicationMessage::PrimaryKeepalive`] back within a timeout; `next` is
/// cancel-safe, so wrapping it in `tokio::time::timeout` is fine.
pub struct ReplicationStream {
    conn: Conn<BoxTransport>,
    state: StreamState,
    sent_copy_done: bool,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("peer", &self.conn.peer)
            .field("backend_pid", &self.conn.backend_pid)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// The next message; `Ok(None)` once the stream is over (the server sent CopyDone or closed
    /// the connection cleanly between messages; also on every call after an error) — reconnect
    /// to continue.
    ///
    /// Cancel-safe: the only await is a socket read into the stream's buffer, and a frame leaves
    /// the buffer only when it is complete and returned in the same poll. `NoticeResponse` and
    /// `ParameterStatus` are logged and skipped. An `ErrorResponse` becomes an [`Error`] with the
    /// server's message (slot active for another PID: transient; missing slot or publication:
    /// config).
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>> {
        loop {
            if self.state != StreamState::Streaming {
                return Ok(None);
            }
            match self.conn.try_frame() {
                Ok(Some(f)) => {
                    if let Some(m) = self.handle(f)? {
                        return Ok(Some(m));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.state = StreamState::Ended;
                    return Err(e);
                }
            }
            match self.conn.read_more().await {
                Ok(0) => {
                    self.state = StreamState::Ended;
                    if self.conn.rbuf.is_empty() {
                        tracing::debug!(peer = %self.conn.peer, "replication connection closed by the server");
                        return Ok(None);
                    }
                    return Err(Error::transient(format!(
                        "connection to PostgreSQL at {} closed in the middle of a message",
                        self.conn.peer
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.state = StreamState::Ended;
                    return Err(e);
                }
            }
        }
    }

    /// Handles one frame synchronously: `Some` message to return, or `None` to keep reading.
    fn handle(&mut self, f: Frame) -> Result<Option<ReplicationMessage>> {
        let out = match f.tag {
            b'd' => parse_copy_data(f.body),
            b'c' => {
                tracing::debug!(peer = %self.conn.peer, "server ended the replication stream (CopyDone)");
                self.state = StreamState::ServerDone;
                Ok(None)
            }
            b'N' => {
                self.conn.notice(&f.body);
                Ok(None)
            }
            b'S' => self.conn.parameter_status(&f.body).map(|()| None),
            b'E' => Err(self.conn.server_error(&f.body)),
            t => Err(protocol(format!(
                "unexpected message {:?} in the replication stream",
                char::from(t)
            ))),
        };
        if out.is_err() {
            self.state = StreamState::Ended;
        }
        out
    }

    /// Sends a standby status update (`'r'`): `write`/`flush`/`apply` LSNs, the client clock
    /// (microseconds since 2000-01-01) and whether the server should answer with a keepalive.
    /// `flush` is what the server may release (`confirmed_flush_lsn`): only send what is durable.
    /// If cancelled midway, the rest of the message is sent first by the next write.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        if self.state == StreamState::Ended || self.sent_copy_done {
            return Err(Error::transient(
                "the replication stream has ended; reconnect to send status updates",
            ));
        }
        let w = &mut self.conn.wbuf;
        w.put_u8(b'd');
        w.put_i32(4 + 1 + 8 * 4 + 1);
        w.put_u8(b'r');
        w.put_u64(write.0);
        w.put_u64(flush.0);
        w.put_u64(apply.0);
        w.put_i64(now_pg_micros());
        w.put_u8(u8::from(reply_requested));
        let r = self.conn.flush().await;
        if r.is_err() {
            self.state = StreamState::Ended;
        }
        r
    }

    /// Bytes received but not yet returned by [`next`](Self::next) (part of a frame, or frames
    /// not asked for yet). For metrics and tests.
    pub fn buffered(&self) -> usize {
        self.conn.rbuf.len()
    }

    /// The PID of the walsender serving this stream.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid
    }

    /// Ends the stream: sends CopyDone, drains (discarding data) until the server's
    /// `ReadyForQuery` or a short timeout (5 s), then terminates the session. A server error
    /// seen while draining is returned; the connection is closed either way.
    pub async fn close(mut self) -> Result<()> {
        let result = if self.state == StreamState::Ended {
            Ok(())
        } else {
            match tokio::time::timeout(CLOSE_TIMEOUT, self.drain()).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(peer = %self.conn.peer, "replication stream did not finish within {CLOSE_TIMEOUT:?}; closing");
                    Ok(())
                }
            }
        };
        self.state = StreamState::Ended;
        frontend::terminate(&mut self.conn.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.io.shutdown()).await;
        result
    }

    async fn drain(&mut self) -> Result<()> {
        if !self.sent_copy_done {
            frontend::copy_done(&mut self.conn.wbuf);
            self.sent_copy_done = true;
        }
        self.conn.flush().await?;
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'd' | b'C' => {}
                b'c' => self.state = StreamState::ServerDone,
                b'N' => self.conn.notice(&f.body),
                b'S' => self.conn.parameter_status(&f.body)?,
                b'E' => return Err(self.conn.server_error(&f.body)),
                b'Z' => return Ok(()),
                t => {
                    return Err(protocol(format!(
                        "unexpected message {:?} while closing the stream",
                        char::from(t)
                    )));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Unit tests against a scripted fake server (the e2e tests use the real PostgreSQL)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        msg(b'R', &b)
    }

    fn param(name: &str, value: &str) -> Vec<u8> {
        msg(b'S', format!("{name}\0{value}\0").as_bytes())
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(code: &str, message: &str) -> Vec<u8> {
        msg(
            b'E',
            format!("SFATAL\0VFATAL\0C{code}\0M{message}\0\0").as_bytes(),
        )
    }

    fn xlog(start: u64, end: u64, data: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend_from_slice(&start.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(data);
        msg(b'd', &b)
    }

    fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut b = vec![b'k'];
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&1i64.to_be_bytes());
        b.push(u8::from(reply));
        msg(b'd', &b)
    }

    /// Reads one frontend message (`startup` has no tag) and returns (tag, body).
    async fn read_msg(s: &mut DuplexStream, startup: bool) -> (u8, Vec<u8>) {
        let tag = if startup {
            0
        } else {
            s.read_u8().await.unwrap()
        };
        let len = s.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    fn params(password: Option<&'static [u8]>) -> StartupParams<'static> {
        StartupParams {
            user: "u",
            password,
            dbname: Some("db"),
            application_name: "test",
            extra_options: None,
            channel_binding: CbPolicy::Prefer,
        }
    }

    async fn client_with(
        server: impl FnOnce(DuplexStream) -> tokio::task::JoinHandle<()>,
        password: Option<&'static [u8]>,
    ) -> (Result<ReplicationClient>, tokio::task::JoinHandle<()>) {
        let (c, s) = tokio::io::duplex(1 << 20);
        let h = server(s);
        let r = ReplicationClient::connect_with(
            Box::new(c),
            "fake".into(),
            "host replication u 1.2.3.4/32 scram-sha-256".into(),
            &params(password),
            None,
        )
        .await;
        (r, h)
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's \\ ok").unwrap(), "'it''s \\ ok'");
        assert!(quote_ident("a\0").is_err());
        assert_eq!(major_version("15.4 (Debian 15.4-1)"), Some(15));
        assert_eq!(major_version("9.6.3"), Some(9));
        assert_eq!(major_version("17beta1"), Some(17));
        assert_eq!(major_version("x"), None);
    }

    #[tokio::test]
    async fn md5_auth_startup_options_and_pre15_slot_syntax() {
        let (client, server) = client_with(
            |mut s| {
                tokio::spawn(async move {
                    let (_, startup) = read_msg(&mut s, true).await;
                    let text = String::from_utf8_lossy(&startup).to_string();
                    assert!(text.contains("replication\0database\0"), "{text}");
                    assert!(text.contains(PINNED_OPTIONS), "{text}");
                    s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
                    let (tag, body) = read_msg(&mut s, false).await;
                    assert_eq!(tag, b'p');
                    let want = md5_hash(b"u", b"pw", [1, 2, 3, 4]);
                    assert_eq!(&body[..body.len() - 1], want.as_bytes());
                    let mut out = auth(0, &[]);
                    out.extend(param("server_version", "14.9"));
                    out.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 1]));
                    out.extend(ready());
                    s.write_all(&out).await.unwrap();
                    let (tag, body) = read_msg(&mut s, false).await;
                    assert_eq!(tag, b'Q');
                    assert_eq!(
                        &body[..],
                        b"CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput NOEXPORT_SNAPSHOT\0"
                    );
                    let mut out = msg(b'T', &[0, 0]);
                    let mut row = 4i16.to_be_bytes().to_vec();
                    for v in [Some("s"), Some("0/16B6C50"), None, Some("pgoutput")] {
                        match v {
                            Some(v) => {
                                row.extend((v.len() as i32).to_be_bytes());
                                row.extend(v.as_bytes());
                            }
                            None => row.extend((-1i32).to_be_bytes()),
                        }
                    }
                    out.extend(msg(b'D', &row));
                    out.extend(msg(b'C', b"CREATE_REPLICATION_SLOT\0"));
                    out.extend(ready());
                    s.write_all(&out).await.unwrap();
                    let _ = read_msg(&mut s, false).await;
                })
            },
            Some(b"pw"),
        )
        .await;
        let mut client = client.unwrap();
        assert_eq!(client.backend_pid(), Some(42));
        assert_eq!(client.server_version(), Some("14.9"));
        let slot = client.create_slot("s").await.unwrap();
        assert_eq!(slot.consistent_point, "0/16B6C50".parse().unwrap());
        assert_eq!(slot.snapshot_name, "");
        client.close().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn cleartext_without_password_is_a_config_error() {
        let (client, _server) = client_with(
            |mut s| {
                tokio::spawn(async move {
                    let _ = read_msg(&mut s, true).await;
                    s.write_all(&auth(3, &[])).await.unwrap();
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                })
            },
            None,
        )
        .await;
        let e = client.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("no password"), "{e}");
    }

    #[tokio::test]
    async fn startup_errors_are_mapped_with_advice() {
        for (code, message, kind, needle) in [
            (
                "28000",
                "no pg_hba.conf entry for replication connection from host \"1.2.3.4\", user \"u\", no encryption",
                ErrorKind::Config,
                "host replication u 1.2.3.4/32 scram-sha-256",
            ),
            (
                "42501",
                "must be superuser or replication role to start walsender",
                ErrorKind::Config,
                "ALTER ROLE \"u\" REPLICATION",
            ),
            (
                "28P01",
                "password authentication failed for user \"u\"",
                ErrorKind::Config,
                "check the password",
            ),
            (
                "57P03",
                "the database system is starting up",
                ErrorKind::Transient,
                "starting up",
            ),
        ] {
            let (client, _server) = client_with(
                |mut s| {
                    tokio::spawn(async move {
                        let _ = read_msg(&mut s, true).await;
                        s.write_all(&error(code, message)).await.unwrap();
                    })
                },
                Some(b"pw"),
            )
            .await;
            let e = client.unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
            let src = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<ServerError>())
                .unwrap();
            assert_eq!(src.code, code);
        }
    }

    /// A stream whose server half is scripted by the test.
    async fn stream_pair() -> (ReplicationStream, DuplexStream) {
        let (c, s) = tokio::io::duplex(1 << 16);
        let cx = ErrorContext {
            user: "u".into(),
            hba_line: String::new(),
        };
        let conn = Conn::new(Box::new(c) as BoxTransport, "fake".into(), cx);
        (
            ReplicationStream {
                conn,
                state: StreamState::Streaming,
                sent_copy_done: false,
            },
            s,
        )
    }

    #[tokio::test]
    async fn frames_split_anywhere_survive_cancellation() {
        let (mut stream, mut server) = stream_pair().await;
        let big = vec![7u8; 300_000];
        let mut wire = Vec::new();
        wire.extend(param("x", "y"));
        wire.extend(msg(b'N', b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0"));
        for i in 0..20u64 {
            wire.extend(xlog(
                i,
                i + 1,
                if i.is_multiple_of(5) { &big } else { b"abc" },
            ));
            wire.extend(keepalive(i, i.is_multiple_of(2)));
        }
        wire.extend(msg(b'c', &[]));
        let writer = tokio::spawn(async move {
            let mut rest = &wire[..];
            let mut n = 1;
            while !rest.is_empty() {
                let k = n.min(rest.len());
                server.write_all(&rest[..k]).await.unwrap();
                rest = &rest[k..];
                n = (n * 7 + 3) % 40_000 + 1;
                tokio::task::yield_now().await;
            }
            server
        });
        // Poll `next()` exactly once and drop it when pending: a cancellation at every await.
        let mut got = Vec::new();
        let mut cancelled_mid_frame = 0;
        loop {
            match futures_util::FutureExt::now_or_never(stream.next()) {
                None => {
                    if stream.buffered() > 0 {
                        cancelled_mid_frame += 1;
                    }
                    tokio::task::yield_now().await;
                }
                Some(r) => match r.unwrap() {
                    Some(m) => got.push(m),
                    None => break,
                },
            }
        }
        let _server = writer.await.unwrap();
        assert!(cancelled_mid_frame > 10, "{cancelled_mid_frame}");
        assert_eq!(got.len(), 40);
        for (i, pair) in got.chunks(2).enumerate() {
            let i = i as u64;
            match &pair[0] {
                ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    data,
                    server_time,
                } => {
                    assert_eq!((wal_start.0, wal_end.0), (i, i + 1));
                    assert_eq!(*server_time, PG_EPOCH_OFFSET_MICROS);
                    assert_eq!(data.len(), if i.is_multiple_of(5) { big.len() } else { 3 });
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                pair[1],
                ReplicationMessage::PrimaryKeepalive {
                    wal_end: Lsn(i),
                    server_time: PG_EPOCH_OFFSET_MICROS + 1,
                    reply_requested: i.is_multiple_of(2)
                }
            );
        }
        assert!(stream.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_errors() {
        let (mut stream, mut server) = stream_pair().await;
        let mut huge = vec![b'd'];
        huge.extend(u32::MAX.to_be_bytes());
        server.write_all(&huge).await.unwrap();
        let e = stream.next().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(e.to_string().contains("1 GiB"), "{e}");
        assert!(stream.next().await.unwrap().is_none());

        let (mut stream, mut server) = stream_pair().await;
        server.write_all(&msg(b'd', b"w\0\0")).await.unwrap();
        assert_eq!(stream.next().await.unwrap_err().kind(), ErrorKind::Fatal);

        let (mut stream, mut server) = stream_pair().await;
        server
            .write_all(&error(
                "55006",
                "replication slot \"s\" is active for PID 7",
            ))
            .await
            .unwrap();
        let e = stream.next().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.to_string().contains("active for PID 7"), "{e}");

        // Clean EOF between frames ends the stream; EOF inside a frame is an error.
        let (mut stream, mut server) = stream_pair().await;
        server.write_all(&keepalive(1, false)).await.unwrap();
        drop(server);
        assert!(stream.next().await.unwrap().is_some());
        assert!(stream.next().await.unwrap().is_none());
        let (mut stream, mut server) = stream_pair().await;
        server.write_all(&keepalive(1, false)[..7]).await.unwrap();
        drop(server);
        assert_eq!(
            stream.next().await.unwrap_err().kind(),
            ErrorKind::Transient
        );
    }

    #[tokio::test]
    async fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let (mut stream, mut server) = stream_pair().await;
            let n = rng.usize(0..200);
            let mut bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            // Mostly plausible headers with small lengths, to reach the parsers.
            if bytes.len() >= 5 && rng.bool() {
                bytes[0] = *rng.choice(b"dcNSEZW").unwrap();
                let len = rng.u32(0..60);
                bytes[1..5].copy_from_slice(&len.to_be_bytes());
                if bytes[0] == b'd' && bytes.len() > 5 {
                    bytes[5] = *rng.choice(b"wkx").unwrap();
                }
            }
            server.write_all(&bytes).await.unwrap();
            drop(server);
            for _ in 0..50 {
                match stream.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
        for _ in 0..300 {
            let n = rng.usize(0..100);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            let _ = parse_fields(&bytes);
            let _ = parse_data_row(&bytes);
        }
    }

    #[tokio::test]
    async fn status_update_wire_format() {
        let (mut stream, mut server) = stream_pair().await;
        stream
            .send_status(Lsn(1), Lsn(2), Lsn(3), true)
            .await
            .unwrap();
        let (tag, body) = read_msg(&mut server, false).await;
        assert_eq!(tag, b'd');
        assert_eq!(body.len(), 34);
        assert_eq!(body[0], b'r');
        assert_eq!(&body[1..9], &1u64.to_be_bytes());
        assert_eq!(&body[9..17], &2u64.to_be_bytes());
        assert_eq!(&body[17..25], &3u64.to_be_bytes());
        let clock = i64::from_be_bytes(body[25..33].try_into().unwrap());
        assert!(clock > 700_000_000_000_000, "{clock}"); // after 2022 in PostgreSQL's epoch
        assert_eq!(body[33], 1);
    }
}
