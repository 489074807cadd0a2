//! homeostat's API inside a program's own axum application: the program's
//! routes and homeostat's on one listener, served with homeostat's
//! connection limits, stopped cleanly. It asks itself for its own route and
//! for homeostat's readiness, then stops.
//!
//! Run it with `cargo run -p homeostat-api --example embed`.

use axum::Router;
use axum::routing::get;
use homeostat_api::{ApiSettings, ApiState, Limits};
use homeostat_store::{Store, StoreOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("homeostat-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite:{}", dir.join("homeostat.db").display());
    let store = Store::connect(&url, StoreOptions::default()).await?;
    // No controller manager here: this program runs its own (or none).
    let state = ApiState::new(
        store.clone(),
        ApiSettings::default(),
        None,
        prometheus_client::registry::Registry::default(),
    );
    state.readiness_checked().await;

    // The program's own routes beside homeostat's (`/v1/…`, `/healthz`,
    // `/readyz`, `/metrics`, the dashboard).
    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "hello from the embedding program" }),
        )
        .merge(homeostat_api::router(state.clone()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(homeostat_api::serve_router(
        listener,
        app,
        Limits::default(),
        stop.clone().cancelled_owned(),
    ));

    // reqwest is built without a TLS backend of its own choosing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let hello = http
        .get(format!("{base}/hello"))
        .send()
        .await?
        .text()
        .await?;
    let ready = http.get(format!("{base}/readyz")).send().await?.status();
    let why = http
        .get(format!("{base}/readyz"))
        .send()
        .await?
        .text()
        .await?;
    println!("/hello: {hello}\n/readyz: {ready} {why}");
    assert!(ready.is_success(), "homeostat is not ready: {ready}");

    // Stop: waiting claims answer, requests in flight finish, the last
    // heartbeats are written, then the store closes.
    state.shutdown_token().cancel();
    stop.cancel();
    server.await?;
    state.close().await;
    store.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
