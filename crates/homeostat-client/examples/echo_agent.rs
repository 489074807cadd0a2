//! A minimal agent: answers each job of queue `echo` with its own payload.
//!
//! ```sh
//! HOMEOSTAT_SERVER=http://127.0.0.1:8080 HOMEOSTAT_BOOTSTRAP_TOKEN=hsb_… \
//!   cargo run -p homeostat-client --example echo_agent
//! ```

use homeostat_client::{Agent, Client, JobError, JobHandler};
use homeostat_model::wire::RegisterRequest;
use homeostat_model::{ClaimedJob, NewAgent};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Echo;

impl JobHandler for Echo {
    async fn handle(
        &self,
        job: ClaimedJob,
        _stop: CancellationToken,
    ) -> Result<Option<Value>, JobError> {
        Ok(Some(job.payload))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("HOMEOSTAT_SERVER")?;
    let token = std::env::var("HOMEOSTAT_BOOTSTRAP_TOKEN")?;
    let client = Client::builder(server).build()?;
    let me = client
        .register(&RegisterRequest {
            bootstrap_token: token,
            agent: NewAgent {
                name: "echo".into(),
                labels: Default::default(),
                queues: vec!["echo".into()],
            },
        })
        .await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let report = Agent::builder(client.with_token(me.credential))
        .concurrency(4)
        .run(Echo, shutdown)
        .await?;
    println!("{report:?}");
    Ok(())
}
