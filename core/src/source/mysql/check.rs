//! Preflight checks for a MySQL/MariaDB source. Each failure names its fix.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::{Error, Result};
use crate::position::BinlogCoord;
use crate::source::mysql::connect::{self, ServerInfo, variable};
use crate::source::{Finding, Level};

/// Server settings a binlog pipeline cannot run without: fails with the first one missing.
pub async fn require_row_binlog(conn: &mut Conn) -> Result<()> {
    for f in settings(conn).await? {
        if f.level == Level::Error {
            return Err(Error::config(f.message));
        }
    }
    Ok(())
}

async fn settings(conn: &mut Conn) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let log_bin = variable(conn, "log_bin").await?.unwrap_or_default();
    out.push(if log_bin.eq_ignore_ascii_case("ON") || log_bin == "1" {
        Finding::new("log_bin", Level::Ok, "binary log enabled")
    } else {
        Finding::new(
            "log_bin",
            Level::Error,
            "the binary log is off: start the server with log_bin (e.g. log_bin = mysql-bin in my.cnf) and restart it",
        )
    });
    let want = [
        (
            "binlog_format",
            "ROW",
            "SET GLOBAL binlog_format = 'ROW' and set it in my.cnf; sessions that set STATEMENT or MIXED still produce statement entries",
        ),
        (
            "binlog_row_image",
            "FULL",
            "SET GLOBAL binlog_row_image = 'FULL' and set it in my.cnf (MINIMAL/NOBLOB images lack the columns tidemark writes)",
        ),
        (
            "binlog_row_metadata",
            "FULL",
            "SET GLOBAL binlog_row_metadata = 'FULL' and set it in my.cnf (without it the binlog carries no column names)",
        ),
    ];
    // MySQL: partial JSON updates are events tidemark cannot apply.
    if let Some(v) = variable(conn, "binlog_row_value_options").await?
        && v.to_ascii_uppercase().contains("PARTIAL_JSON")
    {
        out.push(Finding::new(
            "binlog_row_value_options",
            Level::Error,
            "binlog_row_value_options = PARTIAL_JSON writes JSON updates as diffs tidemark cannot apply: \
             SET GLOBAL binlog_row_value_options = '' (and in my.cnf / the parameter group)",
        ));
    }
    for (name, expected, fix) in want {
        let v = variable(conn, name).await?;
        out.push(match v {
            Some(v) if v.eq_ignore_ascii_case(expected) => {
                Finding::new(name, Level::Ok, format!("{name} = {expected}"))
            }
            Some(v) => Finding::new(name, Level::Error, format!("{name} is {v}, tidemark needs {expected}: {fix}")),
            None if name == "binlog_row_metadata" => Finding::new(
                name,
                Level::Error,
                "the server has no binlog_row_metadata (MySQL < 8.0.1, MariaDB < 10.5): upgrade it; column names are read from the binlog",
            ),
            None => Finding::new(name, Level::Error, format!("{name} is not set: {fix}")),
        });
    }
    Ok(out)
}

/// Runs every check: server settings, grants, the binlog still holding `stored` (the
/// pipeline's committed position, if any), and server_id collisions.
pub async fn run(
    conn: &mut Conn,
    server: &ServerInfo,
    server_id: u32,
    stored: Option<&BinlogCoord>,
) -> Result<Vec<Finding>> {
    let mut out = vec![Finding::new("server", Level::Ok, server.version.clone())];
    out.extend(settings(conn).await?);

    let grants: Vec<String> = conn.query("SHOW GRANTS").await?;
    let all = grants.join(" ").to_ascii_uppercase();
    let has = |p: &str| all.contains("ALL PRIVILEGES ON *.*") || all.contains(p);
    // Table-level privileges (SELECT, LOCK TABLES) are also in ALL [PRIVILEGES] on a database.
    let has_on_db = |p: &str| has(p) || all.contains("ALL PRIVILEGES ON `");
    let monitor = server.monitor_privilege();
    for (p, why) in [
        ("REPLICATION SLAVE", "to read the binlog"),
        (monitor, "to read binlog positions"),
        ("SELECT", "for the snapshot"),
    ] {
        // MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR and accepts both names.
        let ok = if p == "SELECT" {
            has_on_db(p)
        } else {
            has(p) || (p == "BINLOG MONITOR" && has("REPLICATION CLIENT"))
        };
        out.push(if ok {
            Finding::new("grants", Level::Ok, format!("{p} granted"))
        } else {
            Finding::new(
                "grants",
                Level::Error,
                format!("the user lacks {p} ({why}): GRANT {p} ON *.* TO <user>"),
            )
        });
    }

    let logs = match binary_logs(conn).await {
        Ok(logs) => logs,
        Err(e) => {
            out.push(Finding::new(
                "binlog_retention",
                Level::Warning,
                format!("cannot list the binary logs: {}", e.one_line()),
            ));
            Vec::new()
        }
    };
    if let (Some(first), Some(pos)) = (logs.first(), stored) {
        let oldest = BinlogCoord::new(first.0.clone(), 4);
        out.push(if *pos < oldest {
            Finding::new(
                "binlog_retention",
                Level::Error,
                format!(
                    "the pipeline's position {pos} is older than the oldest binlog on the server ({}): \
                     those changes are gone. Run `tidemark reset` to take a new snapshot",
                    first.0
                ),
            )
        } else {
            Finding::new(
                "binlog_retention",
                Level::Ok,
                format!("the binlog still holds the pipeline's position {pos}"),
            )
        });
    }
    let expire = variable(conn, "binlog_expire_logs_seconds")
        .await?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let expire_days = variable(conn, "expire_logs_days")
        .await?
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let expire = expire.max((expire_days * 86400.0) as u64);
    out.push(if expire == 0 || expire >= 3 * 86400 {
        Finding::new(
            "binlog_retention",
            Level::Ok,
            if expire == 0 {
                "binlogs are kept until purged by hand".to_string()
            } else {
                format!("binlogs are kept {} h", expire / 3600)
            },
        )
    } else {
        Finding::new(
            "binlog_retention",
            Level::Warning,
            format!(
                "binlogs expire after {} h: a pipeline stopped longer than that needs a new snapshot. \
                 Consider SET GLOBAL binlog_expire_logs_seconds = 259200 (3 days) or more",
                expire / 3600
            ),
        )
    });

    if !server.mariadb {
        let managed = managed(conn).await;
        let lock_tables = has_on_db("LOCK TABLES");
        out.push(if managed {
            if lock_tables {
                Finding::new("snapshot_lock", Level::Ok, "the snapshot uses LOCK TABLES ... READ on the copied tables while it starts (RDS/Aurora refuse FLUSH TABLES WITH READ LOCK)")
            } else {
                Finding::new("snapshot_lock", Level::Error, "RDS/Aurora refuse FLUSH TABLES WITH READ LOCK, so the snapshot locks the copied tables while it starts: GRANT LOCK TABLES ON <db>.* TO <user>")
            }
        } else if has("RELOAD") {
            Finding::new("snapshot_lock", Level::Ok, "the snapshot uses FLUSH TABLES WITH READ LOCK while it starts (RELOAD granted)")
        } else if lock_tables {
            Finding::new("snapshot_lock", Level::Ok, "the snapshot uses LOCK TABLES ... READ on the copied tables while it starts (no RELOAD for FLUSH TABLES WITH READ LOCK)")
        } else {
            Finding::new("snapshot_lock", Level::Error, "the snapshot needs a lock while it starts and the user has neither RELOAD (FLUSH TABLES WITH READ LOCK) nor LOCK TABLES: GRANT LOCK TABLES ON <db>.* TO <user>")
        });
        let gtid_mode = variable(conn, "gtid_mode").await?.unwrap_or_default();
        out.push(if gtid_mode.eq_ignore_ascii_case("ON") {
            Finding::new("gtid", Level::Ok, "gtid_mode = ON: the pipeline resumes by executed GTID set")
        } else {
            Finding::new("gtid", Level::Warning, format!("gtid_mode is {gtid_mode}: the pipeline resumes by binlog file:pos, which does not survive a failover to a replica; set gtid_mode = ON (with enforce_gtid_consistency = ON) to resume by GTID set"))
        });
        match conn
            .query_first::<Option<String>, _>(
                "SELECT value FROM mysql.rds_configuration WHERE name = 'binlog retention hours'",
            )
            .await
        {
            Ok(v) => {
                let hours = v.flatten().and_then(|v| v.trim().parse::<u64>().ok());
                out.push(match hours {
                    Some(h) if h >= 24 => Finding::new("rds_binlog_retention", Level::Ok, format!("RDS keeps binlogs {h} h (binlog retention hours)")),
                    Some(h) => Finding::new("rds_binlog_retention", Level::Warning, format!("RDS keeps binlogs only {h} h: a pipeline stopped longer needs a new snapshot. CALL mysql.rds_set_configuration('binlog retention hours', 168)")),
                    None => Finding::new("rds_binlog_retention", Level::Warning, "RDS binlog retention hours is NULL: RDS purges binlogs as soon as it can, and a stopped pipeline loses its position. CALL mysql.rds_set_configuration('binlog retention hours', 168)"),
                });
            }
            Err(mysql_async::Error::Server(e)) if e.code == connect::codes::NO_SUCH_TABLE => {}
            Err(e) => out.push(Finding::new(
                "rds_binlog_retention",
                Level::Warning,
                format!(
                    "cannot read mysql.rds_configuration: {}",
                    Error::from(e).one_line()
                ),
            )),
        }
    }

    let own_id = variable(conn, "server_id").await?.unwrap_or_default();
    let hosts: Vec<mysql_async::Row> = conn.query(server.replicas_sql()).await.unwrap_or_default();
    let taken = hosts.iter().any(|r| {
        r.get::<Option<u32>, _>(0)
            .flatten()
            .is_some_and(|id| id == server_id)
    });
    out.push(if own_id == server_id.to_string() {
        Finding::new(
            "server_id",
            Level::Error,
            format!("tidemark's server_id {server_id} equals the server's own: set source.server_id to another value"),
        )
    } else if taken {
        Finding::new(
            "server_id",
            Level::Warning,
            format!(
                "a registered replica already uses server_id {server_id} (another tidemark worker of this pipeline, or a replica): \
                 if it is not this pipeline, set source.server_id to a unique value"
            ),
        )
    } else {
        Finding::new(
            "server_id",
            Level::Ok,
            format!("server_id {server_id} is not used by another replica"),
        )
    });
    Ok(out)
}

/// `SHOW BINARY LOGS`: every binlog file the server keeps, oldest first, with its size.
pub async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>> {
    // Rows, not tuples: the column count differs by server (MySQL 8 adds `Encrypted`).
    let rows = conn
        .query::<mysql_async::Row, _>("SHOW BINARY LOGS")
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name = r.get_opt::<String, _>(0)?.ok()?;
            let size = r.get_opt::<u64, _>(1).and_then(Result::ok).unwrap_or(0);
            Some((name, size))
        })
        .collect())
}

/// Bytes the server has written after `from`, by the sizes of `logs` (`binary_logs`); `None`
/// when `from`'s file is no longer kept.
pub fn bytes_after(logs: &[(String, u64)], from: &BinlogCoord) -> Option<u64> {
    let first = logs.iter().position(|(name, _)| *name == from.file)?;
    let written: u64 = logs[first..].iter().map(|(_, size)| size).sum();
    Some(written.saturating_sub(from.pos))
}

/// The current write position ([`ServerInfo::binlog_status_sql`]).
pub async fn current_position(conn: &mut Conn, server: &ServerInfo) -> Result<BinlogCoord> {
    let sql = server.binlog_status_sql();
    let row: Option<mysql_async::Row> = conn.query_first(sql).await?;
    let row = row.ok_or_else(|| {
        Error::config(format!(
            "{sql} returned nothing: the binary log is off (enable log_bin)"
        ))
    })?;
    let file: Option<String> = row.get(0);
    let pos: Option<u64> = row.get(1);
    Ok(BinlogCoord::new(file.unwrap_or_default(), pos.unwrap_or(4)))
}

/// Whether the server is a managed one (RDS for MySQL, Aurora MySQL) that refuses
/// `FLUSH TABLES WITH READ LOCK` to its users.
pub async fn managed(conn: &mut Conn) -> bool {
    if variable(conn, "aurora_version")
        .await
        .ok()
        .flatten()
        .is_some()
    {
        return true;
    }
    if variable(conn, "basedir")
        .await
        .ok()
        .flatten()
        .is_some_and(|d| d.starts_with("/rdsdbbin"))
    {
        return true;
    }
    conn.query_first::<i64, _>(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'rds_configuration'",
    )
    .await
    .ok()
    .flatten()
    .is_some_and(|n| n > 0)
}

/// MySQL's executed GTID set (`@@GLOBAL.gtid_executed`) when `gtid_mode = ON`; `None`
/// otherwise (and on MariaDB, whose GTIDs are read otherwise).
pub async fn mysql_gtid_executed(conn: &mut Conn) -> Result<Option<String>> {
    let mode = variable(conn, "gtid_mode").await?.unwrap_or_default();
    if !mode.eq_ignore_ascii_case("ON") {
        return Ok(None);
    }
    let set = variable(conn, "gtid_executed").await?.unwrap_or_default();
    let set = crate::source::mysql::gtid::GtidSet::parse(&set)?;
    Ok(Some(set.to_string()))
}

pub use connect::server_info;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_after_counts_through_the_later_files() {
        let logs = vec![
            ("bin.000001".to_string(), 1_000),
            ("bin.000002".to_string(), 500),
            ("bin.000003".to_string(), 300),
        ];
        let at = |file: &str, pos| BinlogCoord::new(file.to_string(), pos);
        assert_eq!(bytes_after(&logs, &at("bin.000003", 300)), Some(0));
        assert_eq!(bytes_after(&logs, &at("bin.000003", 100)), Some(200));
        assert_eq!(bytes_after(&logs, &at("bin.000002", 400)), Some(400));
        assert_eq!(bytes_after(&logs, &at("bin.000000", 4)), None);
    }
}
