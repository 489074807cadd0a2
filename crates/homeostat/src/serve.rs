//! `homeostat run`: the store, the controller manager and the HTTP API in
//! one process, stopped cleanly by SIGTERM or SIGINT.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use homeostat_api::ApiState;
use homeostat_controllers::notifier::Secret;
use homeostat_controllers::{Notifier, register_builtin};
use homeostat_model::{ApiScope, TokenKind};
use homeostat_runtime::Manager;
use homeostat_store::{Store, StoreError, StoreOptions};
use prometheus_client::registry::Registry;

use crate::config::{Config, ConfigError, Notifications};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn main(config: Config) -> ExitCode {
    // reqwest's rustls needs a crypto provider, installed once per process
    // (before the trace exporter's client is made).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry =
        match crate::logging::init_with_traces(config.log_format, &config.log_level, "homeostat") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("homeostat: {e}");
                return ExitCode::from(2);
            }
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("homeostat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ran = runtime.block_on(run(config));
    drop(runtime);
    telemetry.shutdown();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let usage = e.is::<ConfigError>();
            // The causes too: "the database is unavailable" alone does not
            // say which file or why.
            let mut why = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                why.push_str(": ");
                why.push_str(&c.to_string());
                cause = c.source();
            }
            tracing::error!(error = %why, "homeostat stopped");
            eprintln!("homeostat: {why}");
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(config: Config) -> Result<(), BoxError> {
    // Listened for from the start: a SIGTERM that comes as soon as the
    // server answers (or while it opens its store) stops it cleanly instead
    // of killing it by the signal's default action.
    let stop = stop_signal();
    crate::stalls::watch();
    let url = config.store_url()?;
    let options = StoreOptions {
        max_connections: config.max_connections,
        retry_initial: config.jobs.retry_initial,
        retry_max: config.jobs.retry_max,
        default_queue_deadline: config.jobs.default_deadline,
        fair_share_turn: config.jobs.fair_share_turn,
        ..StoreOptions::default()
    };
    // Migrations run here; on PostgreSQL they hold an advisory lock, so N
    // replicas starting at once migrate once.
    let store = Store::connect(&url, options).await?;
    tracing::info!(backend = store.backend(), "store ready");
    // Claims that wait must hear of jobs other replicas queue from the
    // first one on; the listener retries on its own if this runs out.
    if tokio::time::timeout(std::time::Duration::from_secs(10), store.listening())
        .await
        .is_err()
    {
        tracing::warn!("not yet listening for jobs queued by other replicas; retrying");
    }
    ensure_admin_key(&store).await?;
    apply_limits(&store, &config.limits).await?;

    let mut registry = Registry::default();
    let mut builder = Manager::builder()
        .lease_store(Arc::new(store.clone()))
        .metrics(&mut registry);
    register_builtin(
        &mut builder,
        &store,
        &config.controllers,
        notifier(&config.notifications)?,
    )?;
    let manager = builder.start()?;
    // A peer that stops gives its leases up: take them at once, not at the
    // next tick (which is a minute for some controllers).
    let mut releases = store.lease_releases();
    let follower = manager.clone();
    tokio::spawn(async move {
        loop {
            match releases.recv().await {
                Ok(name) => follower.lease_released(&name),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let state = ApiState::new(
        store.clone(),
        config.api.clone(),
        Some(manager.clone()),
        registry,
    );
    // Bounded: a database that does not answer makes the checks fail
    // within a second, and the server then starts not ready.
    state.readiness_checked().await;
    let listener =
        listen(&config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, holder = manager.holder(), "homeostat listening");

    let stopping = state.shutdown_token();
    let limits = homeostat_api::Limits {
        header_read_timeout: config.api.header_read_timeout,
        max_open: crate::connections::max_open(config.api.max_open_connections),
    };
    tracing::info!(max_open = limits.max_open, "connection limits");
    let probes = match &config.api.probes_listen {
        Some(at) => {
            let probes = listen(at).map_err(|e| format!("cannot listen on {at}: {e}"))?;
            tracing::info!(address = %probes.local_addr()?, "probes and metrics listening");
            let stop = stopping.clone().cancelled_owned();
            let app = homeostat_api::probes_router(state.clone());
            Some(tokio::spawn(homeostat_api::serve_router(
                probes, app, limits, stop,
            )))
        }
        None => None,
    };
    // Waiting claims answer (empty) at once on the signal, readiness fails,
    // and the heartbeats heard since the last write are written.
    homeostat_api::serve(listener, state, limits, stop).await;
    if let Some(probes) = probes {
        let _ = probes.await;
    }
    let report = manager.shutdown(config.shutdown_grace).await;
    tracing::info!(?report, "controllers stopped, leases released");
    store.close().await;
    Ok(())
}

/// `homeostat admin-key`: a new admin API key, made in the database
/// directly and printed once.
pub(crate) fn admin_key(config: Config) -> ExitCode {
    crate::logging::init(config.log_format, "warn");
    let made = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|rt| {
            rt.block_on(async {
                let url = config.store_url()?;
                let store = Store::connect(&url, StoreOptions::default()).await?;
                let issued = store
                    .issue_api_key(ApiScope::Admin, None, "homeostat:admin-key")
                    .await?;
                store.close().await;
                Ok::<_, BoxError>(issued)
            })
        });
    match made {
        Ok(issued) => {
            println!(
                "homeostat: a new admin API key (id {}; shown once, only its hash is stored):\n{}",
                issued.info.id, issued.secret
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("homeostat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `homeostat backup`: an online copy of the SQLite database to `to`.
pub(crate) fn backup(config: Config, to: &std::path::Path) -> ExitCode {
    crate::logging::init(config.log_format, "warn");
    if config.database_url.is_some() {
        eprintln!(
            "homeostat: backup copies the embedded SQLite database; back PostgreSQL up with \
             pg_dump (docs/server.md, \"Backups\")"
        );
        return ExitCode::from(2);
    }
    if !config.data_dir.join("homeostat.db").exists() {
        eprintln!(
            "homeostat: no database in {} to back up (is --data-dir the server's?)",
            config.data_dir.display()
        );
        return ExitCode::from(2);
    }
    let started = std::time::Instant::now();
    let copied = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            StoreError::from(homeostat_model::ValidationError::new(
                "runtime",
                e.to_string(),
            ))
        })
        .and_then(|rt| {
            rt.block_on(async {
                let url = config.store_url().map_err(|e| {
                    homeostat_model::ValidationError::new("data_dir", e.to_string())
                })?;
                let store = Store::connect(&url, StoreOptions::default()).await?;
                eprintln!(
                    "homeostat: copying {} to {} …",
                    config.data_dir.join("homeostat.db").display(),
                    to.display()
                );
                let copied = store.backup_to(to).await;
                store.close().await;
                copied
            })
        });
    match copied {
        Ok(b) => {
            println!(
                "homeostat: backup written to {}: {:.1} MB, {} jobs, {} audit events, in {:.1} s",
                to.display(),
                b.bytes as f64 / 1e6,
                b.jobs,
                b.audit_events,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("homeostat: backup: {e}");
            ExitCode::from(match e {
                StoreError::Invalid(_) | StoreError::UnsupportedUrl { .. } => 2,
                StoreError::Unavailable { .. } => 5,
                _ => 1,
            })
        }
    }
}

/// The first SIGTERM or SIGINT. The handlers are installed by this call,
/// not when the future is first polled.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                let _ = one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

/// On the first start (no live admin key), creates an admin API key and
/// prints it once on standard output; only its hash is stored.
/// Sets the configuration file's limits that differ from the stored ones.
async fn apply_limits(
    store: &Store,
    limits: &std::collections::BTreeMap<String, homeostat_model::LimitSpec>,
) -> Result<(), BoxError> {
    for (name, spec) in limits {
        let stored = match store.limit(name).await {
            Ok(limit) => Some(limit.spec),
            Err(homeostat_store::StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if stored.as_ref() != Some(spec) {
            store.set_limit(name, spec, "config").await?;
            tracing::info!(limit = %name, "limit set from the configuration");
        }
    }
    Ok(())
}

async fn ensure_admin_key(store: &Store) -> Result<(), BoxError> {
    let now = store.now();
    let keys = store.list_tokens(TokenKind::ApiKey, None).await?;
    let live_admin = keys
        .iter()
        .any(|k| k.admin && k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > now));
    if live_admin {
        return Ok(());
    }
    let issued = store
        .issue_api_key(ApiScope::Admin, None, "homeostat:first-start")
        .await?;
    tracing::warn!(
        token_id = %issued.info.id,
        "created an admin API key; it is printed once on standard output"
    );
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "homeostat: admin API key (shown once, only its hash is stored):\n{}",
        issued.secret
    )?;
    out.flush()?;
    Ok(())
}

fn notifier(n: &Notifications) -> Result<Notifier, BoxError> {
    let mut sinks = Vec::new();
    let client = || Notifier::http_client().map_err(|e| format!("notifications: {e}"));
    if let Some(url) = &n.webhook_url {
        sinks.push(Notifier::Webhook {
            url: Secret::new(url.clone()),
            secret: n.webhook_secret.clone().map(Secret::new),
            client: client()?,
        });
    }
    if let Some(url) = &n.slack_url {
        sinks.push(Notifier::Slack {
            url: Secret::new(url.clone()),
            client: client()?,
        });
    }
    Ok(match sinks.len() {
        0 => Notifier::Log,
        1 => sinks.remove(0),
        _ => Notifier::FanOut(sinks),
    })
}

/// Connections the kernel queues before the server accepts them (capped by
/// `net.core.somaxconn`). With tokio's 1,024, a fleet of 10,000 agents
/// reconnecting at once overflowed the queue, and connections whose
/// handshakes were dropped waited for the client's retries (minutes).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let address: std::net::SocketAddr = address.parse().map_err(std::io::Error::other)?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart can listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}
