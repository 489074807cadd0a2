//! Domain types of homeostat: jobs, agents, tenants, tokens, audit events and
//! notifications, their state machines and validation, and the API wire types.
//!
//! Filled by the store issue; the crate exists now so the dependency arrows of
//! the design hold from the start.
