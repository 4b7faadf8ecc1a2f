//! The binlog stream task: reads events from the server, decodes captured rows with each
//! table's plan, and hands the pipeline transactions in binlog (= commit) order.
//!
//! Contracts:
//! - Events reach the pipeline in binlog order through a bounded channel (backpressure); a
//!   transaction is `Begin`, any number of `Rows`, then `Commit`, never interleaved. Rows of a
//!   huge transaction stream through: nothing holds a whole transaction.
//! - Commit points are only XID, a `COMMIT` query, a standalone statement (DDL) and an XA
//!   COMMIT/ROLLBACK. Heartbeats only report liveness and how far the server has sent.
//! - XA: rows of a prepared XA transaction are held (per XA id) until its XA COMMIT, where they
//!   are delivered as that group's rows; XA ROLLBACK drops them. While one is open, `Commit`
//!   carries a resume point at its beginning (and no GTID state), so a restart re-reads it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::change::{Op, TableId, Value};
use crate::error::{Error, Result};
use crate::position::{BinlogCoord, Lsn, MyPosition};
use crate::source::mysql::binlog::{
    self, GtidState, MariaGtid, QueryKind, TablePlan, event, parse_table_map,
};
use crate::source::mysql::gtid::{GtidSet, MyGtid};
use crate::source::stream::{ChangeStream, SourceEvent, StreamPosition};
use crate::store::SourcePosition;

/// What the pipeline receives, in binlog order.
pub type MyEvent = SourceEvent<MyPosition>;

/// A commit point: where reading resumes after it.
#[derive(Debug, Clone)]
pub struct MyCommit {
    /// Where reading resumes by file:pos after this transaction (or at the oldest open XA
    /// transaction).
    pub resume: BinlogCoord,
    /// The GTID state after this transaction (`None` while an XA transaction is open or when
    /// the server has no GTIDs).
    pub gtid: Option<String>,
}

/// Binlog positions: a transaction is named by where its first event begins (which orders
/// transactions and names `_pos`); a restart resumes at `resume` or by `gtid`.
impl StreamPosition for MyPosition {
    type Tx = BinlogCoord;
    type Commit = MyCommit;
    type Progress = BinlogCoord;

    fn tx_key(tx: &BinlogCoord) -> Lsn {
        tx.key()
    }
    fn key(&self) -> Lsn {
        self.tx.key()
    }
    fn rows(&self) -> u64 {
        self.rows
    }
    fn partial(&self, tx: &BinlogCoord, rows: u64) -> Self {
        MyPosition {
            tx: tx.clone(),
            rows,
            resume: self.resume.clone(),
            gtid: self.gtid.clone(),
        }
    }
    fn complete(tx: BinlogCoord, commit: MyCommit) -> Result<Self> {
        Ok(MyPosition {
            tx,
            rows: MyPosition::WHOLE,
            resume: commit.resume,
            gtid: commit.gtid,
        })
    }
    fn received(&self) -> BinlogCoord {
        self.resume.clone()
    }
    fn lag_bytes(&self, server: &BinlogCoord) -> Option<u64> {
        (server.file == self.resume.file).then(|| server.pos.saturating_sub(self.resume.pos))
    }
    fn into_source(self) -> SourcePosition {
        SourcePosition::Mysql(self)
    }
}

/// Where and how to start reading.
#[derive(Debug, Clone)]
pub struct StartAt {
    pub coord: BinlogCoord,
    /// The GTID position after the last durable transaction: MariaDB's state (every domain)
    /// or MySQL's executed set. With `use_gtid`, reading resumes there instead of at `coord`.
    pub gtid: Option<String>,
    pub use_gtid: bool,
}

/// Which tables are captured.
#[derive(Debug, Clone)]
pub enum Capture {
    /// Every table of these databases.
    Databases(HashSet<String>),
    Tables(HashSet<TableId>),
}

impl Capture {
    pub fn includes(&self, t: &TableId) -> bool {
        match self {
            Capture::Databases(d) => d.contains(&t.schema),
            Capture::Tables(ts) => ts.contains(t),
        }
    }
}

/// MySQL: refuses a GTID position whose following transactions the server has purged (the
/// server would otherwise end the dump with error 1236, or skip them on a replica).
async fn refuse_purged(conn: &mut Conn, set: &GtidSet) -> Result<()> {
    let row: Option<(Option<i64>, Option<String>)> = conn
        .exec_first(
            "SELECT GTID_SUBSET(@@GLOBAL.gtid_purged, ?), @@GLOBAL.gtid_purged",
            (set.to_string(),),
        )
        .await?;
    if let Some((Some(0), purged)) = row {
        return Err(Error::config(format!(
            "the server purged binlogs this pipeline has not read: gtid_purged {} is not contained in the pipeline's \
             GTID position {set}. Changes since then are lost from the binlog; run `tidemark reset` to take a new snapshot, \
             and keep binlogs longer (binlog_expire_logs_seconds; on RDS/Aurora: CALL mysql.rds_set_configuration('binlog retention hours', 168)). \
             See \"Operations runbook\" in the README",
            purged.unwrap_or_default().replace('\n', "")
        )));
    }
    Ok(())
}

/// Handle on a running stream task.
pub struct StreamHandle {
    pub events: mpsc::Receiver<Result<MyEvent>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ChangeStream<MyPosition> for StreamHandle {
    async fn next(&mut self) -> Option<Result<MyEvent>> {
        self.events.recv().await
    }
    /// Nothing to confirm: the binlog is not released by readers.
    fn ack(&mut self, _durable: &MyPosition) {}
    async fn stop(self) -> Result<()> {
        StreamHandle::stop(self).await;
        Ok(())
    }
}

impl StreamHandle {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        drop(self.events);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Requests the binlog from `start` on `conn` and spawns the task reading it.
pub async fn spawn(
    mut conn: Conn,
    server_id: u32,
    start: StartAt,
    capture: Capture,
    mariadb: bool,
) -> Result<StreamHandle> {
    // A heartbeat every second while idle: liveness and lag even without traffic.
    conn.query_drop("SET @master_heartbeat_period = 1000000000")
        .await?;
    if mariadb {
        // Real GTID / annotate events instead of MySQL-compatible placeholders.
        conn.query_drop("SET @mariadb_slave_capability = 4").await?;
    }
    // MySQL: the executed set is tracked whenever the checkpoint has one (a snapshot taken
    // with gtid_mode = ON records it), whatever the resume mode.
    let mysql_set = match (&start.gtid, mariadb) {
        (Some(g), false) => Some(GtidSet::parse(g)?),
        _ => None,
    };
    let use_gtid = start.use_gtid && start.gtid.is_some();
    let state = if mariadb {
        GtidState::parse(start.gtid.as_deref().unwrap_or(""))?
    } else {
        GtidState::default()
    };
    let state_for_check = state.clone();
    if use_gtid && mariadb {
        conn.exec_drop("SET @slave_connect_state = ?", (state.to_string(),))
            .await?;
        conn.query_drop("SET @slave_gtid_strict_mode = 0, @slave_gtid_ignore_duplicates = 0")
            .await?;
    }
    if use_gtid && let Some(set) = &mysql_set {
        refuse_purged(&mut conn, set).await?;
    }
    let file = if use_gtid {
        Vec::new()
    } else {
        start.coord.file.clone().into_bytes()
    };
    let mut request = BinlogStreamRequest::new(server_id)
        .with_filename(&file)
        .with_pos(if use_gtid { 4 } else { start.coord.pos });
    if use_gtid && let Some(set) = &mysql_set {
        request = request.with_gtid().with_gtid_set(set.to_sids()?);
    }
    let stream = conn.get_binlog_stream(request).await?;
    let (tx, rx) = mpsc::channel(1024);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let mut reader = Reader {
        out: tx.clone(),
        file: start.coord.file.clone(),
        capture,
        plans: HashMap::new(),
        group: None,
        state,
        have_gtid: mariadb && start.gtid.is_some(),
        mysql_set,
        mariadb,
        xa_open: BTreeMap::new(),
        gap_check: (use_gtid && mariadb).then_some(state_for_check),
    };
    let task = tokio::spawn(async move {
        let mut stream = stream;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown_rx.changed() => break,
                next = stream.next() => next,
            };
            let result = match next {
                None => Err(Error::transient("the server ended the binlog stream")),
                Some(Err(e)) => Err(Error::from(e)),
                Some(Ok(ev)) => reader.on_event(&ev).await,
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
                break;
            }
            if reader.out.is_closed() {
                break;
            }
        }
        let _ = stream.close().await;
    });
    Ok(StreamHandle {
        events: rx,
        shutdown: shutdown_tx,
        task,
    })
}

/// The transaction (event group) being read.
struct Group {
    begin: BinlogCoord,
    gtid: Option<MariaGtid>,
    /// Begin already sent to the pipeline.
    announced: bool,
    commit_ts: i64,
    /// Rows of a prepared XA group go to `Reader::xa_open` instead of the pipeline.
    xa_prepare: bool,
    /// The XA id of an XA group (MariaDB: from its GTID event; MySQL: from `XA START`).
    xa_key: Option<Vec<u8>>,
    /// MySQL: the group's GTID, added to the executed set when the group commits.
    my_gtid: Option<MyGtid>,
}

/// A prepared XA transaction not yet committed: where it began, its rows, its MySQL GTID.
struct OpenXa {
    begin: BinlogCoord,
    rows: Vec<MyEvent>,
    gtid: Option<MyGtid>,
}

struct Reader {
    out: mpsc::Sender<Result<MyEvent>>,
    file: String,
    capture: Capture,
    plans: HashMap<u64, Arc<TablePlan>>,
    group: Option<Group>,
    state: GtidState,
    have_gtid: bool,
    /// MySQL: the executed GTID set after the last whole transaction read (without the GTIDs
    /// of prepared XA transactions still open, so resuming there re-reads them).
    mysql_set: Option<GtidSet>,
    mariadb: bool,
    /// Prepared XA transactions not yet committed, by XA id.
    xa_open: BTreeMap<Vec<u8>, OpenXa>,
    /// GTID resume: the requested state, checked against the GTID_LIST events the server sends
    /// before the first transaction. A list past it means the server skipped transactions
    /// (purged binlogs): MariaDB does not refuse that by itself when strict mode is off.
    gap_check: Option<GtidState>,
}

impl Reader {
    async fn send(&self, ev: MyEvent) -> Result<()> {
        self.out
            .send(Ok(ev))
            .await
            .map_err(|_| Error::transient("pipeline stopped reading"))
    }

    fn start_group(&mut self, begin: BinlogCoord, ts: u32, gtid: Option<MariaGtid>) {
        let xa_prepare = gtid
            .as_ref()
            .is_some_and(|g| g.flags & MariaGtid::FL_PREPARED_XA != 0);
        let xa_key = gtid.as_ref().and_then(|g| g.xid.clone());
        self.group = Some(Group {
            begin,
            gtid,
            announced: false,
            commit_ts: i64::from(ts) * 1_000_000,
            xa_prepare,
            xa_key,
            my_gtid: None,
        });
    }

    /// Sends `Begin` for the current group if not yet sent (an implicit group starts here).
    async fn announce(&mut self, at: &BinlogCoord, ts: u32) -> Result<()> {
        if self.group.is_none() {
            self.start_group(at.clone(), ts, None);
        }
        let Some(g) = self.group.as_mut() else {
            return Ok(());
        };
        if g.announced || g.xa_prepare {
            return Ok(());
        }
        g.announced = true;
        let ev = MyEvent::Begin {
            tx: g.begin.clone(),
            commit_ts: g.commit_ts,
            xid: g
                .gtid
                .as_ref()
                .map(|g| g.seq)
                .or_else(|| g.my_gtid.as_ref().map(|g| g.gno))
                .and_then(|n| i64::try_from(n).ok()),
        };
        self.send(ev).await
    }

    /// Ends the current group: a commit point at `end`.
    /// Ends the current group at the commit event that starts at `here` and ends at `end`. A
    /// commit without a group (a group the reader never saw begin) counts as one beginning at
    /// `here`: never at `end`, where the next group begins — two groups must never share a
    /// begin coordinate, or the second would count as durable with the first.
    async fn commit(&mut self, here: BinlogCoord, end: BinlogCoord, ts: u32) -> Result<()> {
        let at = self
            .group
            .as_ref()
            .map(|g| g.begin.clone())
            .unwrap_or_else(|| here.clone());
        self.announce(&at, ts).await?;
        if let Some(g) = self.group.take() {
            if let Some(gt) = g.gtid {
                self.state.apply(&gt);
                self.have_gtid = true;
            }
            if let (Some(set), Some(gt)) = (self.mysql_set.as_mut(), g.my_gtid) {
                set.add(&gt);
            }
        }
        let (resume, gtid) = match self.xa_open.values().map(|x| &x.begin).min() {
            // MySQL's set leaves the open XA transactions out: resuming there re-reads them.
            Some(oldest) => (
                oldest.clone(),
                self.mysql_set.as_ref().map(|s| s.to_string()),
            ),
            None => (
                end.clone(),
                match &self.mysql_set {
                    Some(set) => Some(set.to_string()),
                    None => self.have_gtid.then(|| self.state.to_string()),
                },
            ),
        };
        let held = resume != end;
        self.send(MyEvent::Commit(MyCommit { resume, gtid }))
            .await?;
        if held {
            // The resume point stays at an open XA transaction, but everything before `end`
            // was sent: without this, `--until-caught-up` under steady traffic (no
            // heartbeats) would wait for that XA transaction for ever.
            self.send(MyEvent::Progress(end)).await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: &mysql_common::binlog::events::Event) -> Result<()> {
        let h = ev.header();
        let end = u64::from(h.log_pos());
        let here = BinlogCoord::new(
            self.file.clone(),
            end.saturating_sub(u64::from(h.event_size())),
        );
        if h.event_type_raw() != event::TRANSACTION_PAYLOAD {
            return self.handle(&h, ev.data(), here, end).await;
        }
        // binlog_transaction_compression: the transaction's events, compressed, in one event
        // (its GTID event stays outside). Every inner event is at this event's coordinates.
        let payload = ev
            .read_event::<mysql_common::binlog::events::TransactionPayloadEvent<'_>>()
            .map_err(|e| Error::data(format!("transaction payload at {here}: {e}")))?;
        let mut data = payload
            .decompressed()
            .map_err(|e| Error::data(format!("transaction payload at {here}: {e}")))?;
        let mut inner = mysql_common::binlog::EventStreamReader::new(
            mysql_common::binlog::consts::BinlogVersion::Version4,
        );
        loop {
            let next = inner
                .read_decompressed(&mut data)
                .map_err(|e| Error::data(format!("transaction payload at {here}: {e}")))?;
            let Some(ev) = next else { break };
            self.handle(&ev.header(), ev.data(), here.clone(), end)
                .await?;
        }
        Ok(())
    }

    /// One event of type `h.event_type_raw()` with body `data`, which begins at `here` and
    /// ends at `end` in the current binlog file.
    async fn handle(
        &mut self,
        h: &mysql_common::binlog::events::BinlogEventHeader,
        data: &[u8],
        here: BinlogCoord,
        end: u64,
    ) -> Result<()> {
        let ty = h.event_type_raw();
        let ts = h.timestamp();
        tracing::trace!(event_type = ty, at = %here, "binlog event");
        match ty {
            event::ROTATE => {
                let (pos, name) = binlog::parse_rotate(data, &binlog::header_bytes(h))?;
                self.file = name;
                if h.log_pos() != 0 && self.group.is_none() {
                    // A real rotate between transactions is a resume point.
                    self.send(MyEvent::Progress(BinlogCoord::new(self.file.clone(), pos)))
                        .await?;
                }
            }
            event::HEARTBEAT if self.group.is_none() => {
                self.send(MyEvent::Progress(BinlogCoord::new(self.file.clone(), end)))
                    .await?;
            }
            event::MARIA_GTID_LIST => {
                if let Some(wanted) = &self.gap_check {
                    for g in binlog::parse_gtid_list(data)? {
                        if let Some((_, seq)) = wanted.0.get(&g.domain)
                            && g.seq > *seq
                        {
                            return Err(Error::config(format!(
                                "the binlog no longer holds the transactions after the pipeline's GTID position {wanted} \
                                 (the server would start after {}-{}-{}): they were purged, changes since then are lost \
                                 (MySQL error 1236 in effect). Run `tidemark reset` to take a new snapshot",
                                g.domain, g.server, g.seq
                            )));
                        }
                    }
                }
            }
            event::MARIA_GTID => {
                self.gap_check = None;
                let g = MariaGtid::parse(data, h.server_id())?;
                self.start_group(here, ts, Some(g));
            }
            event::MYSQL_GTID => {
                self.start_group(here, ts, None);
                if let Some(g) = self.group.as_mut() {
                    g.my_gtid = Some(MyGtid::parse_event(data)?);
                }
            }
            event::MYSQL_ANONYMOUS_GTID => self.start_group(here, ts, None),
            event::MYSQL_GTID_TAGGED => {
                if self.mysql_set.is_some() {
                    return Err(Error::config(format!(
                        "a tagged GTID at {here} (MySQL 8.3+ `SET gtid_next = 'AUTOMATIC:tag'`): tidemark cannot track tagged GTIDs yet. \
                         Set source.resume = \"file\" (or --resume file) and run `tidemark reset` to take a snapshot that resumes by file:pos"
                    )));
                }
                self.start_group(here, ts, None);
            }
            event::QUERY => {
                let (db, sql) = binlog::parse_query(data)?;
                self.on_query(
                    &db,
                    &sql,
                    here,
                    BinlogCoord::new(self.file.clone(), end),
                    ts,
                )
                .await?;
            }
            event::XID => {
                self.commit(here, BinlogCoord::new(self.file.clone(), end), ts)
                    .await?
            }
            event::XA_PREPARE_LOG => {
                let (one_phase, xid) = binlog::xa_prepare_xid(data)?;
                if one_phase {
                    // XA COMMIT ... ONE PHASE (MySQL): the group commits here.
                    let held = self.xa_open.remove(&xid);
                    self.deliver_xa(held, &here, ts).await?;
                    return self
                        .commit(here, BinlogCoord::new(self.file.clone(), end), ts)
                        .await;
                }
                if let Some(g) = self.group.take() {
                    let entry = self.xa_open.entry(xid).or_insert_with(|| OpenXa {
                        begin: g.begin.clone(),
                        rows: Vec::new(),
                        gtid: None,
                    });
                    entry.begin = g.begin;
                    entry.gtid = g.my_gtid;
                    if let Some(gt) = g.gtid {
                        self.state.apply(&gt);
                        self.have_gtid = true;
                    }
                }
            }
            event::TABLE_MAP => {
                let tm = parse_table_map(data)?;
                let id = TableId::new(tm.database.clone(), tm.table.clone());
                let same = self
                    .plans
                    .get(&tm.table_id)
                    .is_some_and(|p| p.fingerprint == tm.rest);
                if !same {
                    let plan = TablePlan::build(&tm, self.capture.includes(&id))?;
                    self.plans.insert(tm.table_id, Arc::new(plan));
                }
            }
            t if binlog::rows_kind(t).is_some() => {
                let Some((op, v2)) = binlog::rows_kind(t) else {
                    return Ok(());
                };
                let table_id = binlog::rows_table_id(data)?;
                let Some(plan) = self.plans.get(&table_id).cloned() else {
                    return Err(Error::data(format!(
                        "rows event at {here} for table id {table_id} without a TABLE_MAP"
                    )));
                };
                if !plan.captured {
                    return Ok(());
                }
                let mut ops = Vec::new();
                let mut values = Vec::new();
                binlog::decode_rows(&plan, data, op, v2, &mut ops, &mut values)
                    .map_err(|e| e.context(format!("at {here}")))?;
                let rows = MyEvent::Rows {
                    schema: plan.schema.clone(),
                    ops,
                    values,
                };
                if let Some(g) = self.group.as_ref().filter(|g| g.xa_prepare) {
                    let key = g.xa_key.clone().unwrap_or_default();
                    let begin = g.begin.clone();
                    self.xa_open
                        .entry(key)
                        .or_insert_with(|| OpenXa {
                            begin,
                            rows: Vec::new(),
                            gtid: None,
                        })
                        .rows
                        .push(rows);
                } else {
                    self.announce(&here, ts).await?;
                    self.send(rows).await?;
                }
            }
            event::MYSQL_PARTIAL_UPDATE_ROWS => {
                return Err(Error::config(
                    "the binlog holds partial JSON updates (binlog_row_value_options = PARTIAL_JSON), which tidemark cannot apply: \
                     SET GLOBAL binlog_row_value_options = '' (and in my.cnf / the parameter group); the updates already \
                     written this way cannot be read, so run `tidemark reset` for a new snapshot",
                ));
            }
            t if (event::MARIA_COMPRESSED_FIRST..=event::MARIA_COMPRESSED_LAST).contains(&t) => {
                return Err(Error::config(
                    "the binlog holds compressed events (log_bin_compress = ON), which tidemark cannot read: \
                     set log_bin_compress = OFF",
                ));
            }
            event::MARIA_BINLOG_CHECKPOINT if self.group.is_none() && end > 0 => {
                // Between transactions: the server has sent everything up to here.
                self.send(MyEvent::Progress(BinlogCoord::new(self.file.clone(), end)))
                    .await?;
            }
            _ => {} // ANNOTATE_ROWS, INTVAR, RAND, USER_VAR, STOP, ...
        }
        Ok(())
    }

    /// Sends the held rows of a committed XA transaction as the current group's rows.
    async fn deliver_xa(
        &mut self,
        held: Option<OpenXa>,
        here: &BinlogCoord,
        ts: u32,
    ) -> Result<()> {
        // One-phase XA: the group looked prepared while its rows were held. Also when nothing
        // was held (only tables not captured), its commit must announce it like any other.
        if let Some(g) = self.group.as_mut() {
            g.xa_prepare = false;
        }
        let Some(x) = held else { return Ok(()) };
        let at = self
            .group
            .as_ref()
            .map_or_else(|| here.clone(), |g| g.begin.clone());
        self.announce(&at, ts).await?;
        for r in x.rows {
            self.send(r).await?;
        }
        Ok(())
    }

    async fn on_query(
        &mut self,
        db: &str,
        sql: &str,
        here: BinlogCoord,
        end: BinlogCoord,
        ts: u32,
    ) -> Result<()> {
        match binlog::classify_query(sql) {
            QueryKind::Begin => {
                if self.group.is_none() {
                    self.start_group(here, ts, None);
                }
                // MySQL marks an XA group only by its `XA START` (MariaDB: in the GTID event).
                if !self.mariadb
                    && let Some(key) = binlog::xa_query_xid(sql)
                    && let Some(g) = self.group.as_mut()
                {
                    g.xa_prepare = true;
                    g.xa_key = Some(key);
                }
            }
            QueryKind::Commit | QueryKind::Rollback => {
                self.commit(here.clone(), end.clone(), ts).await?
            }
            QueryKind::Ignore => {}
            QueryKind::XaCommit | QueryKind::XaRollback => {
                let commit = matches!(binlog::classify_query(sql), QueryKind::XaCommit);
                let xid = self
                    .group
                    .as_ref()
                    .and_then(|g| g.xa_key.clone())
                    .or_else(|| binlog::xa_query_xid(sql));
                let held = xid.and_then(|x| self.xa_open.remove(&x));
                if let (Some(set), Some(gt)) = (
                    self.mysql_set.as_mut(),
                    held.as_ref().and_then(|x| x.gtid.as_ref()),
                ) {
                    set.add(gt);
                }
                if commit {
                    self.deliver_xa(held, &here, ts).await?;
                }
                self.commit(here.clone(), end.clone(), ts).await?;
            }
            QueryKind::StatementDml => {
                if concerns(&self.capture, db, sql) {
                    return Err(Error::config(format!(
                        "statement-based binlog entry for database {db} at {here}: tidemark needs row events. \
                         Set binlog_format = ROW (SET GLOBAL binlog_format = 'ROW', in my.cnf, and in sessions that override it); \
                         statement: {}",
                        sql.chars().take(120).collect::<String>()
                    )));
                }
                // Not ours: the group goes on to its XID or COMMIT.
            }
            QueryKind::Truncate(name) => {
                let id = match name.split_once('.') {
                    Some((d, t)) => TableId::new(d, t),
                    None => TableId::new(db, name.as_str()),
                };
                // The table's columns if a TABLE_MAP was seen, else a `T` row without data
                // columns (its metadata columns say all there is to say).
                let schema = self
                    .plans
                    .values()
                    .find(|p| p.schema.id == id && p.captured)
                    .map(|p| p.schema.clone())
                    .or_else(|| {
                        self.capture.includes(&id).then(|| {
                            Arc::new(crate::change::TableSchema {
                                id: id.clone(),
                                columns: Vec::new(),
                            })
                        })
                    });
                let at = self
                    .group
                    .as_ref()
                    .map_or_else(|| here.clone(), |g| g.begin.clone());
                self.announce(&at, ts).await?;
                if self.capture.includes(&id) {
                    self.send(MyEvent::SchemaChange {
                        database: db.to_string(),
                        statement: sql.to_string(),
                    })
                    .await?;
                }
                if let Some(schema) = schema {
                    let n = schema.columns.len();
                    self.send(MyEvent::Rows {
                        schema,
                        ops: vec![Op::Truncate],
                        values: vec![Value::Null; n],
                    })
                    .await?;
                }
                self.commit(here.clone(), end.clone(), ts).await?;
            }
            QueryKind::Ddl => {
                let at = self
                    .group
                    .as_ref()
                    .map_or_else(|| here.clone(), |g| g.begin.clone());
                self.announce(&at, ts).await?;
                if concerns(&self.capture, db, sql) {
                    self.send(MyEvent::SchemaChange {
                        database: db.to_string(),
                        statement: sql.to_string(),
                    })
                    .await?;
                }
                self.commit(here.clone(), end.clone(), ts).await?;
            }
        }
        Ok(())
    }
}

/// Whether a statement (run with default database `db`) may concern a captured table: for a
/// table list, it names one of them; for whole databases, it runs in or names one of them.
/// Errs on the side of yes (a false match only adds a schema-history record, or refuses a
/// statement-format change that would be lost otherwise).
fn concerns(capture: &Capture, db: &str, sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase().replace('`', "");
    match capture {
        Capture::Databases(dbs) => {
            dbs.contains(db)
                || dbs
                    .iter()
                    .any(|d| lower.contains(&format!("{}.", d.to_ascii_lowercase())))
        }
        Capture::Tables(ts) => ts.iter().any(|t| {
            let name = t.name.to_ascii_lowercase();
            let named = lower.match_indices(&name).any(|(i, _)| {
                let before = lower[..i].chars().next_back();
                let after = lower[i + name.len()..].chars().next();
                let ident = |c: Option<char>| {
                    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                };
                !ident(before) && !ident(after)
            });
            named
                && (t.schema == db
                    || lower.contains(&format!("{}.", t.schema.to_ascii_lowercase())))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_concern_captured_tables_only() {
        let tables = Capture::Tables([TableId::new("app", "orders")].into_iter().collect());
        assert!(concerns(&tables, "app", "ALTER TABLE `orders` ADD c INT"));
        assert!(concerns(
            &tables,
            "other",
            "alter table app.orders add c int"
        ));
        assert!(!concerns(
            &tables,
            "app",
            "ALTER TABLE orders_old ADD c INT"
        ));
        assert!(!concerns(&tables, "other", "ALTER TABLE orders ADD c INT"));
        let dbs = Capture::Databases(["app".to_string()].into_iter().collect());
        assert!(concerns(&dbs, "app", "CREATE TABLE x (id int)"));
        assert!(concerns(&dbs, "mysql", "RENAME TABLE app.a TO app.b"));
        assert!(!concerns(&dbs, "mysql", "CREATE USER u"));
    }
}
