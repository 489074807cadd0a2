//! The handlers, one file per part of the API.

pub(crate) mod admin;
pub(crate) mod agent;
pub(crate) mod jobs;
pub(crate) mod probes;
pub(crate) mod signals;
