//! Alertmanager's webhook body, as Alertmanager sends it (version 4 of its
//! webhook format). Unknown fields are accepted: Alertmanager adds fields
//! over time, and the body is taken unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One webhook notification: a group of alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerWebhook {
    /// `"4"`.
    #[serde(default)]
    pub version: String,
    /// The group's key.
    #[serde(default)]
    pub group_key: String,
    /// `firing` or `resolved` (the group's).
    #[serde(default)]
    pub status: String,
    /// The receiver's name.
    #[serde(default)]
    pub receiver: String,
    /// The alerts, each with its own status.
    pub alerts: Vec<Alert>,
}

/// One alert of a webhook notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Identifying labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Descriptive annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it started firing (RFC 3339).
    #[serde(default)]
    pub starts_at: String,
    /// When it ended (RFC 3339; a zero time while firing).
    #[serde(default)]
    pub ends_at: String,
    /// Link to the alert's source.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's identity of the alert (a hash of its labels).
    #[serde(default)]
    pub fingerprint: String,
}

impl Alert {
    /// Whether it is firing (else resolved).
    pub fn is_firing(&self) -> bool {
        self.status == "firing"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Alertmanager's documentation (webhook_config).
    #[test]
    fn the_documented_body_parses() {
        let body = r#"{
          "version": "4",
          "groupKey": "{}:{alertname=\"DiskFull\"}",
          "truncatedAlerts": 0,
          "status": "firing",
          "receiver": "homeostat",
          "groupLabels": {"alertname": "DiskFull"},
          "commonLabels": {"alertname": "DiskFull", "severity": "page"},
          "commonAnnotations": {},
          "externalURL": "http://alertmanager:9093",
          "alerts": [{
            "status": "firing",
            "labels": {"alertname": "DiskFull", "instance": "db1"},
            "annotations": {"summary": "disk 95% full"},
            "startsAt": "2026-11-28T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "c0ffee0123456789"
          }]
        }"#;
        let hook: AlertmanagerWebhook = serde_json::from_str(body).unwrap();
        assert_eq!(hook.alerts.len(), 1);
        assert!(hook.alerts[0].is_firing());
        assert_eq!(hook.alerts[0].fingerprint, "c0ffee0123456789");
        assert_eq!(hook.alerts[0].labels["instance"], "db1");
    }
}
