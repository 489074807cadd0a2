//! A custom controller registered with a manager: keep a local copy of the
//! groups in an external directory (an identity provider, an LDAP server) in
//! sync, every 2 seconds and on demand.
//!
//! Run it with `cargo run -p homeostat-runtime --example group_sync`
//! (`RUST_LOG=debug` shows every run).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, ControllerOptions, Manager, Reconciled};
use prometheus_client::registry::Registry;

type Groups = BTreeMap<String, BTreeSet<String>>;

/// Stands in for the external source of truth.
#[derive(Clone, Default)]
struct Directory(Arc<Mutex<Groups>>);

impl Directory {
    fn set(&self, group: &str, members: &[&str]) {
        let members = members.iter().map(|m| m.to_string()).collect();
        self.0.lock().unwrap().insert(group.to_owned(), members);
    }

    fn remove(&self, group: &str) {
        self.0.lock().unwrap().remove(group);
    }

    async fn fetch(&self) -> Result<Groups, BoxError> {
        // A real directory is a network call; cancellation reaches it through
        // the context (see `reconcile`).
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(self.0.lock().unwrap().clone())
    }
}

/// The controller: makes `local` equal to the directory's groups.
struct GroupSync {
    directory: Directory,
    local: Arc<Mutex<Groups>>,
}

impl Controller for GroupSync {
    fn name(&self) -> &str {
        "group-sync"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(2)
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let desired = tokio::select! {
            groups = self.directory.fetch() => groups?,
            _ = ctx.cancelled() => return Err("cancelled while fetching groups".into()),
        };
        let mut local = self.local.lock().unwrap();
        let mut changed = 0;
        local.retain(|name, _| {
            let keep = desired.contains_key(name);
            changed += u64::from(!keep);
            keep
        });
        for (name, members) in desired {
            if local.get(&name) != Some(&members) {
                local.insert(name, members);
                changed += 1;
            }
        }
        // An exclusive controller runs under a lease; its epoch goes with
        // every write so a deposed leader's writes are refused.
        tracing::info!(epoch = ?ctx.epoch(), changed, "groups in sync");
        Ok(Reconciled::items(changed))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let directory = Directory::default();
    directory.set("admins", &["ada", "grace"]);
    directory.set("oncall", &["linus"]);
    let local = Arc::new(Mutex::new(Groups::new()));

    let mut registry = Registry::default();
    let mut builder = Manager::builder().metrics(&mut registry);
    builder.register(
        GroupSync {
            directory: directory.clone(),
            local: Arc::clone(&local),
        },
        ControllerOptions::default().timeout(Duration::from_secs(1)),
    )?;
    let manager = builder.start()?;

    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("after start:   {:?}", local.lock().unwrap());

    // Someone changes the directory and asks for a sync now rather than at
    // the next tick (an admin clicking "sync", a webhook from the directory).
    directory.set("oncall", &["linus", "margaret"]);
    directory.remove("admins");
    manager.trigger("group-sync")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("after trigger: {:?}", local.lock().unwrap());

    for status in manager.status() {
        println!("status: {}", serde_json::to_string(&status)?);
    }
    let report = manager.shutdown(Duration::from_secs(5)).await;
    println!("shutdown: {report:?}");

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    for line in text.lines().filter(|l| l.contains("outcome=\"success\"")) {
        println!("metric: {line}");
    }
    Ok(())
}
