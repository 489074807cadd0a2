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

/// Refuses a database migrated by a newer build.
pub(crate) fn check_version(found: Option<i64>, set: Set) -> Result<(), StoreError> {
    let supported = latest(set);
    match found {
        Some(database) if database > supported => Err(StoreError::SchemaTooNew {
            database,
            supported,
        }),
        _ => Ok(()),
    }
}
