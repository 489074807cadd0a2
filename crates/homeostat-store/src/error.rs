use homeostat_model::{Id, ValidationError};

/// What can go wrong in the store. Messages name the operation and the ids.
#[derive(Debug, thiserror::Error)]
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
        job: Id,
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
    /// The URL names no supported backend.
    #[error("unsupported database URL {0:?}: expected sqlite:… or postgres://…")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("{operation} failed: {source}")]
    Database {
        /// What was asked.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("migrating the database failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// Adds the operation's name to driver errors.
pub(crate) trait Context<T> {
    fn op(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn op(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { operation, source })
    }
}

pub(crate) fn corrupt(operation: &'static str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        operation,
        source: sqlx::Error::Decode(what.to_string().into()),
    }
}
