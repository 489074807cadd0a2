//! How many connections `homeostat run` may hold open: what the
//! configuration asks, within what the process's open-file limit allows.

/// Descriptors kept for what is not a connection: the database pool, the
/// listener, logs, the files SQLite opens.
const RESERVED_FILES: usize = 64;

/// `configured` connections (0: as many as the open-file limit allows),
/// never more than the open-file limit leaves room for.
pub(crate) fn max_open(configured: usize) -> usize {
    let files = open_file_limit().map_or(usize::MAX, |n| n.saturating_sub(RESERVED_FILES));
    let files = files.max(16);
    if configured == 0 {
        files.min(100_000)
    } else {
        if configured > files {
            tracing::warn!(
                configured,
                allowed = files,
                "api.max_open_connections is above what the open-file limit allows; using the lower"
            );
        }
        configured.min(files)
    }
}

fn open_file_limit() -> Option<usize> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}
