//! The error vocabulary shared by the store, the API and its clients: each
//! error answer carries one of these codes, and clients branch on the code,
//! never on the message. One enum, so that a misspelt code does not compile
//! and docs/api.md's table is checked against it.

use serde::{Deserialize, Serialize};

/// What kind of error an answer is (`code` in `{"code", "message"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, a syntax error, an unknown field, a wrong type (400), or a
    /// body that is not `application/json` (415).
    Malformed,
    /// No credential, or not a live one of the right kind (401).
    Unauthorized,
    /// The credential's role may not do this (403).
    Forbidden,
    /// No such entity, or another tenant's (404).
    NotFound,
    /// The path exists, the method does not (405).
    MethodNotAllowed,
    /// The request took longer than the server's request timeout (408).
    Timeout,
    /// The entity's state does not allow it (409).
    Conflict,
    /// A lease token that is not the job's current one (409).
    StaleLease,
    /// A controller's lease epoch is no longer current: another replica
    /// leads it now (409).
    Fenced,
    /// A body or a field past its bound (413).
    TooLarge,
    /// A value out of range (422).
    Invalid,
    /// An enqueue past the tenant's quota (429, `Retry-After`).
    QuotaExceeded,
    /// The agent holds as many claims open as it may (429, `Retry-After`).
    TooManyClaims,
    /// The server failed (500); the cause is in its log, under the
    /// request's id.
    Internal,
    /// The database was migrated by a newer homeostat than this replica
    /// (500): upgrade the replica.
    SchemaTooNew,
    /// The database is unreachable (503): retry.
    Unavailable,
    /// Client side only: no answer came (the server unreachable, the
    /// connection broken, the call timed out).
    Unreachable,
    /// Client side only: an answer without the API's error body (a proxy's
    /// page), or a code this client does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server answers with (not [`ErrorCode::Unreachable`] or
    /// [`ErrorCode::Unknown`], which only clients use).
    pub const ANSWERED: [ErrorCode; 16] = [
        ErrorCode::Malformed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Timeout,
        ErrorCode::Conflict,
        ErrorCode::StaleLease,
        ErrorCode::Fenced,
        ErrorCode::TooLarge,
        ErrorCode::Invalid,
        ErrorCode::QuotaExceeded,
        ErrorCode::TooManyClaims,
        ErrorCode::Internal,
        ErrorCode::SchemaTooNew,
        ErrorCode::Unavailable,
    ];

    /// The code as the wire spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StaleLease => "stale_lease",
            ErrorCode::Fenced => "fenced",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Invalid => "invalid",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::TooManyClaims => "too_many_claims",
            ErrorCode::Internal => "internal",
            ErrorCode::SchemaTooNew => "schema_too_new",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status a server answers this code with (415 is also
    /// [`ErrorCode::Malformed`]; the client-side codes have none: 0).
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::Malformed => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Timeout => 408,
            ErrorCode::Conflict | ErrorCode::StaleLease | ErrorCode::Fenced => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Invalid => 422,
            ErrorCode::QuotaExceeded | ErrorCode::TooManyClaims => 429,
            ErrorCode::Internal | ErrorCode::SchemaTooNew => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Unreachable | ErrorCode::Unknown => 0,
        }
    }

    /// Whether the same call may succeed if made again later, unchanged.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::QuotaExceeded
                | ErrorCode::TooManyClaims
                | ErrorCode::Unavailable
                | ErrorCode::Unreachable
        )
    }

    /// The control plane could not be reached or could not serve for now
    /// (`unreachable`, `unavailable`): what an agent waits out.
    pub const fn is_out_of_reach(self) -> bool {
        matches!(self, ErrorCode::Unreachable | ErrorCode::Unavailable)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_spells_each_code_as_as_str_does() {
        for code in ErrorCode::ANSWERED
            .into_iter()
            .chain([ErrorCode::Unreachable, ErrorCode::Unknown])
        {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            assert_eq!(serde_json::from_value::<ErrorCode>(json).unwrap(), code);
        }
        // A newer server's code is not an error for an older client.
        let later: ErrorCode = serde_json::from_str("\"rate_limited\"").unwrap();
        assert_eq!(later, ErrorCode::Unknown);
    }

    #[test]
    fn the_api_guide_lists_every_answered_code_with_its_status() {
        let guide = include_str!("../../../docs/api.md");
        let rows: Vec<(u16, &str)> = guide
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let status = cells.get(1)?.parse().ok()?;
                let code = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((status, code))
            })
            .collect();
        for code in ErrorCode::ANSWERED {
            assert!(
                rows.contains(&(code.http_status(), code.as_str())),
                "docs/api.md's error table lacks {} {code}",
                code.http_status()
            );
        }
        for (status, name) in &rows {
            let known: ErrorCode = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_ne!(
                known,
                ErrorCode::Unknown,
                "docs/api.md lists {status} {name}, no such code"
            );
        }
    }

    #[test]
    fn every_answered_code_has_an_error_status() {
        for code in ErrorCode::ANSWERED {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
    }
}
