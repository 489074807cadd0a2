//! The typed HTTP client of homeostat ([`Client`]) and the agent runtime
//! that turns a [`JobHandler`] into a worker ([`Agent`]). Guide:
//! `docs/agent-and-cli.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), homeostat_client::ClientError> {
//! use homeostat_client::Client;
//! use homeostat_model::NewJob;
//!
//! let client = Client::builder("http://127.0.0.1:8080").token("hsk_…").build()?;
//! let enqueued = client.enqueue(None, &NewJob::new("builds", "compile")).await?;
//! println!("{} is {}", enqueued.job.id, enqueued.job.state);
//! # Ok(())
//! # }
//! ```

mod agent;
mod client;
mod error;
mod outbox;

pub use agent::{Agent, AgentBuilder, AgentReport, JobError, JobHandler};
pub use client::{Client, ClientBuilder, JobQuery};
pub use error::ClientError;

/// The Rust snippets of the agent guide, compiled as doctests so that they
/// stay true to the code.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../../docs/agent-and-cli.md")]
    struct AgentAndCli;
}
