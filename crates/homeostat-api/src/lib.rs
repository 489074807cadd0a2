//! The homeostat HTTP server: agent API, admin API, probes and metrics.
//!
//! Filled by the API issue.
