//! The built-in controllers that keep a homeostat queue healthy, and the
//! notifier.
//!
//! Filled by the controllers issue.
