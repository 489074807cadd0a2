//! Typed HTTP client for homeostat and the agent runtime.
//!
//! Filled by the client issue.
