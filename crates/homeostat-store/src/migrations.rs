//! Embedded migrations, one set per backend, and the schema version check.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::StoreError;

/// One backend's migrations: (version, description, SQL).
pub(crate) type Set = &'static [(i64, &'static str, &'static str)];

#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: Set = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "periodic",
        include_str!("../migrations/sqlite/0002_periodic.sql"),
    ),
    (3, "api", include_str!("../migrations/sqlite/0003_api.sql")),
    (
        4,
        "dashboard",
        include_str!("../migrations/sqlite/0004_dashboard.sql"),
    ),
    (
        5,
        "succeeded per minute",
        include_str!("../migrations/sqlite/0005_succeeded_per_minute.sql"),
    ),
    (
        6,
        "fleet",
        include_str!("../migrations/sqlite/0006_fleet.sql"),
    ),
    (
        7,
        "departed agents",
        include_str!("../migrations/sqlite/0007_departed_agents.sql"),
    ),
    (
        8,
        "used-up tokens",
        include_str!("../migrations/sqlite/0008_used_up_tokens.sql"),
    ),
    (
        9,
        "dashboard sessions",
        include_str!("../migrations/sqlite/0009_sessions.sql"),
    ),
    (
        10,
        "controller status, credentials by agent",
        include_str!("../migrations/sqlite/0010_status_and_credentials.sql"),
    ),
    (
        11,
        "audit verifications",
        include_str!("../migrations/sqlite/0011_audit_verifications.sql"),
    ),
    (
        12,
        "limits",
        include_str!("../migrations/sqlite/0012_limits.sql"),
    ),
    (
        13,
        "fair share",
        include_str!("../migrations/sqlite/0013_fair_share.sql"),
    ),
    (
        14,
        "workflows",
        include_str!("../migrations/sqlite/0014_workflows.sql"),
    ),
    (
        15,
        "schema compat",
        include_str!("../migrations/sqlite/0015_schema_compat.sql"),
    ),
    (
        16,
        "traceparent",
        include_str!("../migrations/sqlite/0016_traceparent.sql"),
    ),
    (
        17,
        "pending and waiting",
        include_str!("../migrations/sqlite/0017_pending_and_waiting.sql"),
    ),
    (
        18,
        "limit scope",
        include_str!("../migrations/sqlite/0018_limit_scope.sql"),
    ),
    (
        19,
        "root step",
        include_str!("../migrations/sqlite/0019_root_step.sql"),
    ),
    (
        20,
        "waiting order",
        include_str!("../migrations/sqlite/0020_waiting_order.sql"),
    ),
];

#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: Set = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "periodic",
        include_str!("../migrations/postgres/0002_periodic.sql"),
    ),
    (
        3,
        "jobs layout",
        include_str!("../migrations/postgres/0003_jobs_layout.sql"),
    ),
    (
        4,
        "jobs state type",
        include_str!("../migrations/postgres/0004_jobs_state_type.sql"),
    ),
    (
        5,
        "api",
        include_str!("../migrations/postgres/0005_api.sql"),
    ),
    (
        6,
        "dashboard",
        include_str!("../migrations/postgres/0006_dashboard.sql"),
    ),
    (
        7,
        "succeeded per minute",
        include_str!("../migrations/postgres/0007_succeeded_per_minute.sql"),
    ),
    (
        8,
        "claim guard",
        include_str!("../migrations/postgres/0008_claim_guard.sql"),
    ),
    (
        9,
        "fleet",
        include_str!("../migrations/postgres/0009_fleet.sql"),
    ),
    (
        10,
        "departed agents",
        include_str!("../migrations/postgres/0010_departed_agents.sql"),
    ),
    (
        11,
        "used-up tokens",
        include_str!("../migrations/postgres/0011_used_up_tokens.sql"),
    ),
    (
        12,
        "dashboard sessions",
        include_str!("../migrations/postgres/0012_sessions.sql"),
    ),
    (
        13,
        "controller status, credentials by agent",
        include_str!("../migrations/postgres/0013_status_and_credentials.sql"),
    ),
    (
        14,
        "audit verifications",
        include_str!("../migrations/postgres/0014_audit_verifications.sql"),
    ),
    (
        15,
        "waiting state",
        include_str!("../migrations/postgres/0015_waiting_state.sql"),
    ),
    (
        16,
        "limits",
        include_str!("../migrations/postgres/0016_limits.sql"),
    ),
    (
        17,
        "fair share",
        include_str!("../migrations/postgres/0017_fair_share.sql"),
    ),
    (
        18,
        "pending state",
        include_str!("../migrations/postgres/0018_pending_state.sql"),
    ),
    (
        19,
        "workflows",
        include_str!("../migrations/postgres/0019_workflows.sql"),
    ),
    (
        20,
        "schema compat",
        include_str!("../migrations/postgres/0020_schema_compat.sql"),
    ),
    (
        21,
        "traceparent",
        include_str!("../migrations/postgres/0021_traceparent.sql"),
    ),
    (
        22,
        "pending and waiting",
        include_str!("../migrations/postgres/0022_pending_and_waiting.sql"),
    ),
    (
        23,
        "limit scope",
        include_str!("../migrations/postgres/0023_limit_scope.sql"),
    ),
    (
        24,
        "root step",
        include_str!("../migrations/postgres/0024_root_step.sql"),
    ),
    (
        25,
        "step counts room",
        include_str!("../migrations/postgres/0025_step_counts_room.sql"),
    ),
    (
        26,
        "step context",
        include_str!("../migrations/postgres/0026_step_context.sql"),
    ),
    (
        27,
        "waiting order",
        include_str!("../migrations/postgres/0027_waiting_order.sql"),
    ),
];

/// The newest schema version this build knows.
pub(crate) fn latest(set: Set) -> i64 {
    set.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

pub(crate) fn migrator(set: Set) -> Migrator {
    Migrator::with_migrations(
        set.iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// What a newer schema says of the builds that may use it (the oldest
/// migration a build must know; migration `schema compat`).
pub(crate) const OLDEST_READER: &str = "SELECT oldest_reader FROM schema_compat WHERE id = 1";

/// Whether this build may use a database migrated to `found`, whose
/// `oldest_reader` is read where the schema is newer than the build:
/// `Ok(true)` to migrate it (or it is this build's), `Ok(false)` for a
/// newer schema that declares this build a reader (a rolling upgrade's
/// older replica: it runs without migrating); refused otherwise.
pub(crate) fn check_version(
    found: Option<i64>,
    set: Set,
    oldest_reader: Option<i64>,
) -> Result<bool, StoreError> {
    let supported = latest(set);
    match found {
        Some(database) if database > supported => match oldest_reader {
            Some(oldest) if oldest <= supported => Ok(false),
            _ => Err(StoreError::SchemaTooNew {
                database,
                supported,
            }),
        },
        _ => Ok(true),
    }
}

/// Brings a database up to `set`: reads its version on `read`, refuses it
/// or leaves a newer readable one as it is (`check_version`), and
/// otherwise migrates it on `write`.
pub(crate) async fn bring_up<DB>(
    read: &sqlx::Pool<DB>,
    write: &sqlx::Pool<DB>,
    set: Set,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    DB::Connection: sqlx::migrate::Migrate,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(read)
            .await
            .unwrap_or(None);
    let oldest_reader: Option<i64> = if is_newer(applied, set) {
        sqlx::query_scalar(OLDEST_READER)
            .fetch_optional(read)
            .await
            .unwrap_or(None)
    } else {
        None
    };
    if check_version(applied, set, oldest_reader)? {
        migrator(set).run(write).await?;
    } else {
        tracing::warn!(
            schema = applied,
            build = latest(set),
            "the schema is newer than this build's and declares it a reader: running without migrating (a rolling upgrade)"
        );
    }
    Ok(())
}

/// Whether a database at `found` is newer than this build knows (so that
/// its `oldest_reader` must be read).
pub(crate) fn is_newer(found: Option<i64>, set: Set) -> bool {
    found.is_some_and(|v| v > latest(set))
}

const APPLIED: crate::backend::Sql =
    crate::backend::Sql::both("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success");

/// The database answers and its schema is exactly this build's.
pub(crate) async fn check_current<B: crate::backend::Backend>(b: &B) -> Result<(), StoreError> {
    use crate::backend::{RowExt, Stmt};
    use crate::error::Context;
    let op = "checking the schema version";
    let rows = b.fetch(Stmt::new::<B>(APPLIED)).await.op(op)?;
    let found = rows.first().map(|r| r.opt_int("v")).transpose()?.flatten();
    let set = if B::POSTGRES {
        postgres_set()
    } else {
        sqlite_set()
    };
    let oldest_reader = if is_newer(found, set) {
        let rows = b
            .fetch(Stmt::new::<B>(crate::backend::Sql::both(OLDEST_READER)))
            .await
            .ok();
        rows.and_then(|r| r.first().map(|r| r.int("oldest_reader")))
            .transpose()?
    } else {
        None
    };
    if !check_version(found, set, oldest_reader)? {
        return Ok(()); // newer, and readable by this build
    }
    let wanted = latest(set);
    if found != Some(wanted) {
        return Err(StoreError::Conflict {
            operation: op,
            entity: "schema",
            id: found.unwrap_or(0).to_string(),
            reason: format!("this build needs version {wanted}"),
        });
    }
    Ok(())
}

fn postgres_set() -> Set {
    #[cfg(feature = "postgres")]
    return POSTGRES;
    #[cfg(not(feature = "postgres"))]
    return &[];
}

fn sqlite_set() -> Set {
    #[cfg(feature = "sqlite")]
    return SQLITE;
    #[cfg(not(feature = "sqlite"))]
    return &[];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a backend's migrations directory is in its set, under
    /// its file's version, with its file's SQL; and nothing else is.
    fn matches_its_directory(dir: &str, set: Set) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files: Vec<(i64, String)> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let version = name
                    .split('_')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{dir}/{name} does not start with its version"));
                (version, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        files.sort();
        let listed: Vec<(i64, String)> = set
            .iter()
            .map(|(v, _, sql)| (*v, (*sql).to_owned()))
            .collect();
        let versions = |v: &[(i64, String)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(
            versions(&listed),
            versions(&files),
            "{dir} and its set differ"
        );
        for ((version, sql), (_, file)) in listed.iter().zip(&files) {
            assert_eq!(sql, file, "{dir}: version {version} is not its file's SQL");
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn the_sqlite_set_is_its_directory() {
        matches_its_directory("migrations/sqlite", SQLITE);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_postgres_set_is_its_directory() {
        matches_its_directory("migrations/postgres", POSTGRES);
    }
}
