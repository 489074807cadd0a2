//! The homeostat store: one interface over SQLite and PostgreSQL, each with
//! its own SQL and migrations, and the runtime's lease store with fencing.
//!
//! Filled by the store issue.
