use homeostat_model::{ErrorCode, JobId, ValidationError};

/// What can go wrong in the store. Messages name the operation and the ids;
/// each variant's text is this layer's only, and the cause, when there is
/// one, is its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The input breaks a rule of the model.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such entity.
    #[error("{entity} {id} not found")]
    NotFound {
        /// `job`, `agent`, `tenant`, `token`, `notification`.
        entity: &'static str,
        /// Its id.
        id: String,
    },
    /// The entity exists but is not in a state that allows the operation.
    #[error("{operation} refused for {entity} {id}: {reason}")]
    Conflict {
        /// What was asked.
        operation: &'static str,
        /// `job`, `agent`, ….
        entity: &'static str,
        /// Its id.
        id: String,
        /// Why not.
        reason: String,
    },
    /// A completion, failure or heartbeat carried a lease token that is not
    /// the job's current one (the job was reclaimed, or never claimed).
    #[error("{operation} refused for job {job}: lease token {token} is not current")]
    StaleLease {
        /// What was asked.
        operation: &'static str,
        /// The job.
        job: JobId,
        /// The token presented.
        token: i64,
    },
    /// A fenced write from a leader whose lease epoch is no longer current.
    #[error("{operation} refused: lease {lease:?} is no longer held at epoch {epoch}")]
    Fenced {
        /// What was asked.
        operation: &'static str,
        /// The lease.
        lease: String,
        /// The epoch presented.
        epoch: u64,
    },
    /// A secret (token, key, credential) that is unknown, expired, revoked
    /// or used up. Deliberately says no more.
    #[error("invalid or expired {kind}")]
    Unauthorized {
        /// `bootstrap token`, `API key`, `agent credential`.
        kind: &'static str,
    },
    /// The database was migrated by a newer homeostat.
    #[error(
        "database schema version {database} is newer than this homeostat supports ({supported}); \
         upgrade homeostat or point it at another database"
    )]
    SchemaTooNew {
        /// Version found in the database.
        database: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The URL names no supported backend. Only its scheme is kept: the
    /// rest may hold a password.
    #[error("unsupported database URL scheme {scheme:?}: expected sqlite:… or postgres://…")]
    UnsupportedUrl {
        /// What stood before the first `:` (at most 20 characters).
        scheme: String,
    },
    /// The database could not be reached, or the connection broke during
    /// the operation. Retryable: the pool replaces the connection.
    #[error("{operation} failed: the database is unavailable")]
    Unavailable {
        /// What was asked.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row does not decode into the model (edited by hand, or
    /// written by an incompatible build).
    #[error("{operation} failed: a stored row is corrupt: {detail}")]
    Corrupt {
        /// What was asked.
        operation: &'static str,
        /// What does not decode.
        detail: String,
    },
    /// The database failed.
    #[error("{operation} failed")]
    Database {
        /// What was asked.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("migrating the database failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The code the API answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Invalid(_) | StoreError::UnsupportedUrl { .. } => ErrorCode::Invalid,
            StoreError::NotFound { .. } => ErrorCode::NotFound,
            StoreError::Conflict { .. } => ErrorCode::Conflict,
            StoreError::StaleLease { .. } => ErrorCode::StaleLease,
            StoreError::Fenced { .. } => ErrorCode::Fenced,
            StoreError::Unauthorized { .. } => ErrorCode::Unauthorized,
            StoreError::SchemaTooNew { .. } => ErrorCode::SchemaTooNew,
            StoreError::Unavailable { .. } => ErrorCode::Unavailable,
            StoreError::Corrupt { .. } | StoreError::Database { .. } | StoreError::Migration(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// What was being done when the database failed or answered with a
    /// row it could not read (an internal error's public part: the detail
    /// stays in the log).
    pub fn operation(&self) -> Option<&'static str> {
        match self {
            StoreError::Corrupt { operation, .. }
            | StoreError::Database { operation, .. }
            | StoreError::Unavailable { operation, .. } => Some(operation),
            StoreError::Migration(_) => Some("migrating the database"),
            _ => None,
        }
    }

    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }

    pub(crate) fn unsupported_url(url: &str) -> Self {
        let scheme = url.split(':').next().unwrap_or_default();
        StoreError::UnsupportedUrl {
            scheme: scheme.chars().take(20).collect(),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(source) if is_unavailable(&source) => {
                StoreError::Unavailable {
                    operation: "migrating the database",
                    source,
                }
            }
            e => StoreError::Migration(e),
        }
    }
}

/// Whether a driver error means the database or the connection is gone
/// rather than that the statement was wrong.
pub(crate) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // PostgreSQL: class 08 (connection exception), 57P01-57P03 (admin
        // shutdown, crash shutdown, cannot connect now), 53300 (too many
        // connections). SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) after
        // the busy timeout.
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "5" | "6")
            }) || is_disk_error(e)
        }
        _ => false,
    }
}

/// SQLite could not read or write its files: SQLITE_IOERR (10, with its
/// extended codes), SQLITE_FULL (13), SQLITE_CANTOPEN (14). The database
/// is there, but writes fail until the disk lets them.
pub(crate) fn is_disk_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    d.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 10 | 13 | 14))
}

/// A unique constraint refused the row (PostgreSQL 23505, SQLite 2067/1555).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// SQLite's busy and locked: the database is there, another writer held it
/// past the busy timeout.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| matches!(&*c, "5" | "6")))
}

/// Adds the operation's name to driver errors.
pub(crate) trait Context<T> {
    fn op(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn op(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| db_error(operation, source))
    }
}

/// Whether `e` says the connection it ran on is broken (gone, not merely
/// busy): connections opened before it are not to be trusted.
pub(crate) fn breaks_connections(e: &sqlx::Error) -> bool {
    is_unavailable(e) && !is_busy(e)
}

/// A driver error as the store reports it: `Unavailable` when the database
/// or connection is gone, a corrupt row when a value does not decode.
pub(crate) fn db_error(operation: &'static str, source: sqlx::Error) -> StoreError {
    if is_unavailable(&source) {
        return StoreError::Unavailable { operation, source };
    }
    match source {
        sqlx::Error::ColumnDecode { index, source } => StoreError::Corrupt {
            operation,
            detail: format!("column {index}: {source}"),
        },
        sqlx::Error::Decode(source) => StoreError::Corrupt {
            operation,
            detail: source.to_string(),
        },
        source => StoreError::Database { operation, source },
    }
}

/// A stored integer as `T` (a count, an attempt, an epoch): out of `T`'s
/// range is a corrupt row, not a silently wrapped number.
pub(crate) fn in_range<T: TryFrom<i64>>(
    operation: &'static str,
    col: &str,
    v: i64,
) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| corrupt(operation, format!("{col} = {v} is out of range")))
}

pub(crate) fn corrupt(operation: &'static str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        operation,
        detail: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_prints_its_operation_once_and_keeps_the_cause_as_source() {
        let e = db_error("promoting scheduled jobs", sqlx::Error::PoolTimedOut);
        assert_eq!(e.code().as_str(), "unavailable");
        assert!(e.is_retryable());
        let text = e.to_string();
        assert_eq!(
            text,
            "promoting scheduled jobs failed: the database is unavailable"
        );
        let source = std::error::Error::source(&e).expect("the driver error is the source");
        assert!(!text.contains(&source.to_string()));
    }

    #[test]
    fn undecodable_values_are_corrupt_rows_not_driver_failures() {
        let e = db_error("reading a job", sqlx::Error::Decode("bad state".into()));
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        assert_eq!(e.code().as_str(), "internal");
        assert_eq!(
            e.to_string(),
            "reading a job failed: a stored row is corrupt: bad state"
        );
    }

    #[test]
    fn an_unsupported_url_does_not_repeat_its_password() {
        let e = StoreError::unsupported_url("mysql://admin:hunter2@db/homeostat");
        assert_eq!(e.code().as_str(), "invalid");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("\"mysql\""), "{e}");
    }

    #[test]
    fn a_stored_number_out_of_its_range_is_a_corrupt_row() {
        assert_eq!(in_range::<u32>("reading a job", "attempt", 3).unwrap(), 3);
        let e = in_range::<u32>("reading a job", "attempt", -1).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("attempt = -1"), "{e}");
        assert!(in_range::<u32>("reading a job", "attempt", 1 << 40).is_err());
    }

    #[test]
    fn every_kind_has_its_own_stable_code() {
        let cases = [
            (
                StoreError::Invalid(ValidationError::new("queue", "empty")),
                "invalid",
            ),
            (
                StoreError::NotFound {
                    entity: "job",
                    id: "x".into(),
                },
                "not_found",
            ),
            (
                StoreError::Conflict {
                    operation: "cancelling a job",
                    entity: "job",
                    id: "x".into(),
                    reason: "finished".into(),
                },
                "conflict",
            ),
            (
                StoreError::StaleLease {
                    operation: "completing a job",
                    job: JobId::from_uuid(uuid::Uuid::nil()),
                    token: 1,
                },
                "stale_lease",
            ),
            (
                StoreError::Fenced {
                    operation: "jobs.promoted",
                    lease: "job-scheduler".into(),
                    epoch: 3,
                },
                "fenced",
            ),
            (StoreError::Unauthorized { kind: "API key" }, "unauthorized"),
            (
                StoreError::SchemaTooNew {
                    database: 9,
                    supported: 4,
                },
                "schema_too_new",
            ),
            (
                db_error("listing jobs", sqlx::Error::RowNotFound),
                "internal",
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code().as_str(), code, "{e}");
            assert_eq!(e.is_retryable(), code == "unavailable");
        }
    }
}
