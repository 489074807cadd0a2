//! A keyed controller: keep a local copy of each group of an external
//! directory in sync, one group (key) at a time, as the directory reports
//! changes — and every key again at each resync, in case a change was
//! missed. Each group's status (`ObjectStatus`: the generation acted on,
//! a `Ready` condition) is kept beside the copy; a group whose generation
//! is current is left alone.
//!
//! Run it with `cargo run -p homeostat-runtime --example keyed_sync`; it
//! exits non-zero unless the copy matches the directory in the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_runtime::{
    Action, BoxError, Context, ControllerOptions, KeyedOptions, Manager, ObjectStatus, Reconciler,
};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

/// A group as the directory holds it: its members and a generation that
/// grows with every change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    generation: u64,
    members: BTreeSet<String>,
}

type Groups = BTreeMap<String, Group>;

/// Stands in for the external source of truth, with its change feed.
#[derive(Clone)]
struct Directory {
    groups: Arc<Mutex<Groups>>,
    changes: mpsc::Sender<String>,
}

impl Directory {
    async fn set(&self, name: &str, members: &[&str]) {
        {
            let mut groups = self.groups.lock().unwrap();
            let generation = groups.get(name).map_or(1, |g| g.generation + 1);
            let members = members.iter().map(|m| (*m).to_owned()).collect();
            groups.insert(
                name.to_owned(),
                Group {
                    generation,
                    members,
                },
            );
        }
        self.changes.send(name.to_owned()).await.unwrap();
    }

    async fn remove(&self, name: &str) {
        self.groups.lock().unwrap().remove(name);
        self.changes.send(name.to_owned()).await.unwrap();
    }

    async fn get(&self, name: &str) -> Option<Group> {
        // A real directory is a network call.
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.groups.lock().unwrap().get(name).cloned()
    }
}

/// The reconciler: makes the local copy of one group equal to the
/// directory's.
struct GroupSync {
    directory: Directory,
    local: Arc<Mutex<Groups>>,
    status: Arc<Mutex<BTreeMap<String, ObjectStatus>>>,
}

impl Reconciler for GroupSync {
    type Key = String;

    fn name(&self) -> &str {
        "group-sync"
    }

    fn resync(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn keys(&self, _ctx: &Context) -> Result<Vec<String>, BoxError> {
        let mut keys: BTreeSet<String> = self
            .directory
            .groups
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.extend(self.local.lock().unwrap().keys().cloned());
        Ok(keys.into_iter().collect())
    }

    async fn reconcile(&self, key: String, ctx: Context) -> Result<Action, BoxError> {
        let desired = tokio::select! {
            group = self.directory.get(&key) => group,
            () = ctx.cancelled() => return Err("cancelled while reading the directory".into()),
        };
        let mut local = self.local.lock().unwrap();
        let mut statuses = self.status.lock().unwrap();
        match desired {
            // The generation acted on already: nothing to do.
            Some(group)
                if statuses
                    .get(&key)
                    .is_some_and(|s| s.is_current(group.generation)) => {}
            Some(group) => {
                tracing::info!(group = key, generation = group.generation, "group copied");
                let status = statuses.entry(key.clone()).or_default();
                status.observe(group.generation);
                let members = format!("{} members", group.members.len());
                status.set_ready(true, "Synced", &members, ctx.now());
                local.insert(key, group);
            }
            None => {
                statuses.remove(&key);
                if local.remove(&key).is_some() {
                    tracing::info!(group = key, "group removed");
                }
            }
        }
        Ok(Action::Done)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let (changes, feed) = mpsc::channel(1024);
    let directory = Directory {
        groups: Arc::default(),
        changes,
    };
    let local = Arc::new(Mutex::new(Groups::new()));
    let status: Arc<Mutex<BTreeMap<String, ObjectStatus>>> = Arc::default();

    let mut registry = Registry::default();
    let mut builder = Manager::builder().metrics(&mut registry);
    let keys = builder.register_keyed(
        GroupSync {
            directory: directory.clone(),
            local: Arc::clone(&local),
            status: Arc::clone(&status),
        },
        ControllerOptions::default(),
        KeyedOptions::default()
            .concurrency(4)
            .debounce(Duration::from_millis(50)),
    )?;
    let manager = builder.start()?;
    keys.feed(feed);

    // A burst of changes: each group is reconciled once it is quiet.
    directory.set("admins", &["ada", "grace"]).await;
    directory.set("oncall", &["linus"]).await;
    directory.set("oncall", &["linus", "margaret"]).await;
    directory.set("readers", &["ken"]).await;
    directory.remove("readers").await;
    for i in 0..20 {
        directory.set(&format!("team-{i}"), &["barbara"]).await;
    }

    let in_sync = || *local.lock().unwrap() == *directory.groups.lock().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !in_sync() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let synced = in_sync()
        && status.lock().unwrap().len() == local.lock().unwrap().len()
        && status.lock().unwrap().values().all(ObjectStatus::is_ready);
    let groups = local.lock().unwrap().len();
    let report = manager.shutdown(Duration::from_secs(5)).await;
    println!("shutdown: {report:?}");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    for line in text
        .lines()
        .filter(|l| l.starts_with("homeostat_controller_key"))
    {
        println!("metric: {line}");
    }
    if !synced {
        return Err("the local copy does not match the directory".into());
    }
    println!("in sync: {groups} groups");
    Ok(())
}
