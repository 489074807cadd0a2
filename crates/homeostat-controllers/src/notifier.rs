//! Where notifications go: a webhook (JSON body, HMAC-SHA256 signature when a
//! secret is configured), a Slack incoming webhook, several at once, or the
//! log. Delivery is at least once: a notification is retried until a sink
//! accepts it or it is given up on.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use homeostat_model::Notification;
use serde_json::json;
use sha2::Sha256;

/// Timeout of one delivery attempt.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-homeostat-signature";

/// Header carrying the event name.
pub const EVENT_HEADER: &str = "x-homeostat-event";

/// A delivery that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// What happened, without URLs or secrets.
    pub message: String,
    /// Retrying cannot help (a 4xx other than 408 and 429).
    pub permanent: bool,
}

impl SendError {
    fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Where notifications are delivered.
#[derive(Debug, Clone)]
pub enum Notifier {
    /// Logs each notification (the default: nothing configured).
    Log,
    /// POSTs the notification as JSON.
    Webhook {
        /// Target URL (kept out of logs and errors: it may hold a token).
        url: Secret,
        /// Signs the body when set.
        secret: Option<Secret>,
        /// The HTTP client.
        client: reqwest::Client,
    },
    /// POSTs `{"text": …}` to a Slack incoming webhook.
    Slack {
        /// The incoming-webhook URL (a secret).
        url: Secret,
        /// The HTTP client.
        client: reqwest::Client,
    },
    /// Delivers to each; succeeds when all do.
    FanOut(Vec<Notifier>),
}

impl Notifier {
    /// An HTTP client with the delivery timeout.
    pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .user_agent(concat!("homeostat/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// A webhook sink.
    pub fn webhook(url: impl Into<String>, secret: Option<Secret>) -> Result<Self, reqwest::Error> {
        Ok(Notifier::Webhook {
            url: Secret::new(url),
            secret,
            client: Self::http_client()?,
        })
    }

    /// A Slack incoming-webhook sink.
    pub fn slack(url: impl Into<String>) -> Result<Self, reqwest::Error> {
        Ok(Notifier::Slack {
            url: Secret::new(url),
            client: Self::http_client()?,
        })
    }

    /// Delivers one notification.
    pub async fn send(&self, n: &Notification) -> Result<(), SendError> {
        match self {
            Notifier::Log => {
                tracing::info!(
                    notification = %n.id,
                    event = %n.event,
                    payload = %n.payload,
                    "notification"
                );
                Ok(())
            }
            Notifier::Webhook {
                url,
                secret,
                client,
            } => {
                let body = serde_json::to_vec(&json!({
                    "id": n.id,
                    "event": n.event,
                    "payload": n.payload,
                    "created_at": n.created_at,
                    "attempt": n.attempts + 1,
                }))
                .map_err(|e| SendError::transient(format!("encoding the body: {e}")))?;
                let mut request = client
                    .post(&url.0)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(EVENT_HEADER, &n.event);
                if let Some(secret) = secret {
                    request = request.header(SIGNATURE_HEADER, sign(&secret.0, &body));
                }
                deliver(request.body(body), "webhook").await
            }
            Notifier::Slack { url, client } => {
                let text = format!("*{}*: {}", n.event, summary(&n.payload));
                deliver(client.post(&url.0).json(&json!({ "text": text })), "Slack").await
            }
            Notifier::FanOut(sinks) => {
                let mut failures = Vec::new();
                for sink in sinks {
                    if let Err(e) = Box::pin(sink.send(n)).await {
                        failures.push(e);
                    }
                }
                if failures.is_empty() {
                    return Ok(());
                }
                Err(SendError {
                    permanent: failures.iter().all(|f| f.permanent),
                    message: failures
                        .iter()
                        .map(|f| f.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                })
            }
        }
    }
}

/// `sha256=<hex>` of the body under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One line for humans: the payload's fields as `key=value`.
fn summary(payload: &serde_json::Value) -> String {
    match payload.as_object() {
        Some(fields) => fields
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => payload.to_string(),
    }
}

async fn deliver(request: reqwest::RequestBuilder, sink: &str) -> Result<(), SendError> {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                let code = status.as_u16();
                Err(SendError {
                    message: format!("{sink} answered {status}"),
                    permanent: status.is_client_error() && code != 408 && code != 429,
                })
            }
        }
        // Without the URL: it may carry a token (Slack's always does).
        Err(e) if e.is_timeout() => Err(SendError::transient(format!(
            "{sink} did not answer within {SEND_TIMEOUT:?}"
        ))),
        Err(e) => Err(SendError::transient(format!(
            "{sink} unreachable: {}",
            e.without_url()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sink = Notifier::webhook("https://hooks.example/t0ken", Some(Secret::new("s3cret")))
            .unwrap_or(Notifier::Log);
        let text = format!("{sink:?}");
        assert!(
            !text.contains("t0ken") && !text.contains("s3cret"),
            "{text}"
        );
    }
}
