//! A job's life on an embedded SQLite file: a tenant, an agent registered
//! with a bootstrap token, a job enqueued, claimed under a lease, kept alive
//! by a heartbeat, completed — and the audit log that recorded it verified.
//!
//! Run it with `cargo run -p homeostat-store --example job_lifecycle`.

use std::time::Duration;

use homeostat_model::{NewAgent, NewJob, PlanTier};
use homeostat_store::{NewBootstrapToken, Store, StoreError, StoreOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StoreError> {
    let dir = std::env::temp_dir().join(format!("homeostat-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let url = format!("sqlite:{}", dir.join("homeostat.db").display());
    let store = Store::connect(&url, StoreOptions::default()).await?;

    let tenant = store
        .create_tenant("acme", PlanTier::Standard, "operator:example")
        .await?;
    let token = NewBootstrapToken {
        tenant_id: Some(tenant.id),
        ttl: Duration::from_secs(600),
        uses: 1,
    };
    let bootstrap = store
        .issue_bootstrap_token(&token, "operator:example")
        .await?;
    let agent = NewAgent {
        name: "builder-1".into(),
        labels: Default::default(),
        queues: vec!["builds".into()],
    };
    let (agent, _credential) = store.register_agent(&bootstrap.secret, &agent).await?;
    println!("agent {} registered for tenant {}", agent.id, tenant.name);

    let mut job = NewJob::new("builds", "compile");
    job.payload = serde_json::json!({"repo": "acme/app", "ref": "main"});
    let enqueued = store.enqueue(tenant.id, &job).await?;
    println!("job {} enqueued", enqueued.id);

    let claimed = store
        .claim(agent.id, 10, Duration::from_secs(60))
        .await?
        .remove(0);
    println!(
        "claimed attempt {} with lease token {}",
        claimed.attempt, claimed.lease_token
    );
    store
        .heartbeat_job(
            agent.id,
            claimed.id,
            claimed.lease_token,
            Duration::from_secs(60),
        )
        .await?;
    store
        .complete(
            agent.id,
            claimed.id,
            claimed.lease_token,
            Some(serde_json::json!({"artifact": "app.tar.gz"})),
        )
        .await?;
    let done = store.get_job(claimed.id).await?;
    println!("job is {}", done.state);
    assert_eq!(done.state, homeostat_model::JobState::Succeeded);

    let report = store.verify_audit_chain(&mut |_| {}).await?;
    for event in store.audit_events(0, 100).await? {
        println!(
            "audit {:>2} {:<18} {}",
            event.seq, event.action, event.subject
        );
    }
    println!(
        "audit chain: {} events checked, {}",
        report.checked,
        match &report.first_break {
            None => "intact".to_owned(),
            Some(b) => format!("broken at {}: {}", b.seq, b.reason),
        }
    );
    assert!(report.first_break.is_none());

    store.close().await;
    std::fs::remove_dir_all(&dir).expect("removing the temporary directory");
    Ok(())
}
