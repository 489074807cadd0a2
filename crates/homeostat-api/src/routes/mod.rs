//! The handlers, one file per part of the API.

pub(crate) mod agent;
pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod controllers;
pub(crate) mod jobs;
pub(crate) mod limits;
pub(crate) mod notifications;
pub(crate) mod probes;
pub(crate) mod signals;
pub(crate) mod tenants;
pub(crate) mod tokens;
pub(crate) mod workflows;
