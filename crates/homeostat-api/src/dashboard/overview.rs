//! `/`: what is stuck and why, at a glance: live jobs by state per queue
//! with each backlog's oldest job, jobs finished per minute over the last
//! hour, agents by status, controllers, and what needs a person.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use homeostat_model::{AgentStatus, Job, JobState, Notification, NotificationState};
use homeostat_store::MinuteOutcomes;
use jiff::Timestamp;

use super::controllers::{ControllerRow, controller_rows};
use super::page::{Page, ago, fragment, short};
use super::problem::Problem;
use super::session::Session;
use crate::state::ApiState;

/// How many of each kind of trouble the overview lists.
const SHOWN: u32 = 8;

/// One queue's live jobs.
struct QueueRow {
    queue: String,
    scheduled: u64,
    awaiting_approval: u64,
    queued: u64,
    running: u64,
    /// Waiting for their limits to admit them.
    waiting: u64,
    /// Workflow steps waiting on the steps they need.
    pending: u64,
    oldest: String,
    /// Jobs wait here and no online agent claims from this queue.
    unserved: bool,
}

/// One minute's bar in the chart (SVG coordinates).
struct Bar {
    x: u32,
    ok_y: u32,
    ok_h: u32,
    fail_y: u32,
    fail_h: u32,
    title: String,
}

/// A job that needs a person.
struct JobLine {
    id: String,
    short: String,
    queue: String,
    kind: String,
    detail: String,
}

/// An offline agent that still holds jobs.
struct AgentLine {
    id: String,
    name: String,
    running: u64,
    silent: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    queues: Vec<QueueRow>,
    bars: Vec<Bar>,
    chart_max: u64,
    finished_succeeded: u64,
    finished_failed: u64,
    agents: Vec<(String, u64)>,
    controllers: Vec<ControllerRow>,
    dead_count: u64,
    dead: Vec<JobLine>,
    awaiting: Vec<JobLine>,
    lost_agents: Vec<AgentLine>,
    /// Queues with queued jobs that no online agent claims from, and how
    /// many wait there.
    unserved: Vec<(String, u64)>,
    flagged: Vec<ControllerRow>,
    notifications: Vec<(String, String, String)>,
    attention: usize,
}

/// Chart geometry: 60 bars of `BAR` px with `GAP` between, `HEIGHT` tall.
const BAR: u32 = 8;
const GAP: u32 = 2;
const HEIGHT: u32 = 100;

fn bars(minutes: &[MinuteOutcomes], now: Timestamp) -> (Vec<Bar>, u64) {
    let this_minute = now.as_second() / 60;
    let max = minutes
        .iter()
        .map(|m| m.succeeded + m.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u64| {
        u32::try_from((n * u64::from(HEIGHT)).div_ceil(max)).map_or(HEIGHT, |h| h.min(HEIGHT))
    };
    let bars = (0..60)
        .map(|i| {
            let minute = this_minute - 59 + i;
            let m = minutes.iter().find(|m| m.minute.as_second() / 60 == minute);
            let (ok, failed) = m.map(|m| (m.succeeded, m.failed)).unwrap_or((0, 0));
            // Scaled as a whole so rounding never stacks past the top.
            let total_h = scale(ok + failed);
            let ok_h = scale(ok).min(total_h);
            let fail_h = total_h - ok_h;
            let label = if i == 59 {
                "this minute".to_owned()
            } else {
                format!("{} min ago", 59 - i)
            };
            Bar {
                x: u32::try_from(i).unwrap_or(0) * (BAR + GAP),
                ok_y: HEIGHT - ok_h,
                ok_h,
                fail_y: HEIGHT - ok_h - fail_h,
                fail_h,
                title: format!("{label}: {ok} succeeded, {failed} failed"),
            }
        })
        .collect();
    (bars, max)
}

fn job_line(job: &Job, detail: String) -> JobLine {
    JobLine {
        id: job.id.to_string(),
        short: short(job.id),
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        detail,
    }
}

fn notification_line(n: &Notification, now: Timestamp) -> (String, String, String) {
    (
        n.event.clone(),
        n.last_error.clone().unwrap_or_default(),
        ago(now, n.created_at),
    )
}

/// `GET /`.
pub(crate) async fn overview(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if session.caller.tenant().is_some() {
        // The overview spans tenants; a tenant key sees its own jobs.
        return Ok(Redirect::to("/jobs").into_response());
    }
    let store = &state.store;
    let now = store.now();
    // The chart's sixty minutes, this one included: counts are kept per
    // whole minute.
    let first_minute = now
        - jiff::SignedDuration::new(
            now.as_second().rem_euclid(60) + 59 * 60,
            now.subsec_nanosecond(),
        );
    // Independent reads, so they go to the pool's connections at once.
    let (stats, minutes, (dead, dead_count), awaiting, running, agents, notifications, served) = tokio::try_join!(
        store.stats(),
        store.finished_per_minute(first_minute),
        store.dead_jobs(SHOWN),
        store.awaiting_approval(SHOWN),
        store.running_by_agent(),
        // Offline agents still holding jobs are few (agent-health
        // reclaims their jobs at once); departed agents can be thousands.
        store.list_agents(
            &homeostat_store::AgentFilter {
                status: Some(AgentStatus::Offline),
                tenant_id: None,
            },
            None,
            1000,
        ),
        store.list_notifications(NotificationState::Dead, None, SHOWN),
        store.served_queues(),
    )?;
    let controllers = controller_rows(&state, now).await?;

    let mut queues: Vec<QueueRow> = Vec::new();
    for c in &stats.jobs {
        let row = match queues.iter_mut().find(|q| q.queue == c.queue) {
            Some(row) => row,
            None => {
                queues.push(QueueRow {
                    queue: c.queue.clone(),
                    scheduled: 0,
                    awaiting_approval: 0,
                    queued: 0,
                    running: 0,
                    waiting: 0,
                    pending: 0,
                    oldest: "—".into(),
                    unserved: false,
                });
                queues.last_mut().expect("just pushed")
            }
        };
        match c.state {
            JobState::Scheduled => row.scheduled = c.count,
            JobState::AwaitingApproval => row.awaiting_approval = c.count,
            JobState::Queued => row.queued = c.count,
            JobState::Running => row.running = c.count,
            JobState::Waiting => row.waiting = c.count,
            JobState::Pending => row.pending = c.count,
            _ => {}
        }
    }
    for b in &stats.queues {
        if let Some(row) = queues.iter_mut().find(|q| q.queue == b.queue) {
            row.oldest = ago(now, b.oldest_queued_at);
        }
    }
    queues.sort_by(|a, b| a.queue.cmp(&b.queue));
    for q in &mut queues {
        q.unserved = q.queued > 0 && !served.contains(&q.queue);
    }
    let unserved: Vec<(String, u64)> = queues
        .iter()
        .filter(|q| q.unserved)
        .map(|q| (q.queue.clone(), q.queued))
        .collect();

    let (bars, chart_max) = bars(&minutes, now);
    let agents_by_status = [
        AgentStatus::Online,
        AgentStatus::Draining,
        AgentStatus::Offline,
    ]
    .iter()
    .map(|s| {
        let n = stats
            .agents
            .iter()
            .find(|a| a.status == *s)
            .map_or(0, |a| a.count);
        (s.as_str().to_owned(), n)
    })
    .collect();
    let lost_agents: Vec<AgentLine> = agents
        .items
        .iter()
        .filter(|a| a.status == AgentStatus::Offline)
        .filter_map(|a| {
            running.get(&a.id).map(|n| AgentLine {
                id: a.id.to_string(),
                name: a.name.clone(),
                running: *n,
                silent: ago(now, a.last_heartbeat_at),
            })
        })
        .collect();
    let flagged: Vec<ControllerRow> = controllers
        .iter()
        .filter(|c| c.flag.is_some())
        .cloned()
        .collect();
    let dead: Vec<JobLine> = dead
        .iter()
        .map(|j| job_line(j, j.last_error.clone().unwrap_or_default()))
        .collect();
    let awaiting: Vec<JobLine> = awaiting
        .iter()
        .map(|j| {
            let expires = j
                .approval_expires_at
                .map(|t| format!("approval expires {}", ago(now, t)))
                .unwrap_or_default();
            job_line(j, expires)
        })
        .collect();
    let attention = usize::try_from(dead_count).unwrap_or(usize::MAX)
        + awaiting.len()
        + lost_agents.len()
        + flagged.len()
        + notifications.items.len()
        + unserved.len();
    let view = Overview {
        finished_succeeded: minutes.iter().map(|m| m.succeeded).sum(),
        finished_failed: minutes.iter().map(|m| m.failed).sum(),
        queues,
        bars,
        chart_max,
        agents: agents_by_status,
        controllers,
        dead_count,
        dead,
        awaiting,
        lost_agents,
        unserved,
        flagged,
        notifications: notifications
            .items
            .iter()
            .map(|n| notification_line(n, now))
            .collect(),
        attention,
    };
    Ok(Page::live("Overview", "Overview", "/", fragment(&view)?).respond(&session, &headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(now: Timestamp, ago: i64, succeeded: u64, failed: u64) -> MinuteOutcomes {
        let start = (now.as_second() / 60 - ago) * 60;
        MinuteOutcomes {
            minute: Timestamp::from_second(start).unwrap(),
            succeeded,
            failed,
        }
    }

    #[test]
    fn bars_stay_inside_the_chart_and_land_on_their_minute() {
        let now: Timestamp = "2026-01-01T12:00:30Z".parse().unwrap();
        // Uneven counts whose rounded heights would overflow if scaled apart.
        let minutes = [
            minute(now, 0, 2, 1),
            minute(now, 59, 1, 2),
            minute(now, 5, 0, 0),
        ];
        let (bars, max) = bars(&minutes, now);
        assert_eq!(bars.len(), 60);
        assert_eq!(max, 3);
        for b in &bars {
            assert!(b.ok_h + b.fail_h <= HEIGHT, "{}", b.title);
            assert_eq!(b.fail_y + b.fail_h, b.ok_y);
        }
        assert_eq!(bars[59].ok_h + bars[59].fail_h, HEIGHT);
        assert!(
            bars[59]
                .title
                .starts_with("this minute: 2 succeeded, 1 failed")
        );
        assert!(
            bars[0]
                .title
                .starts_with("59 min ago: 1 succeeded, 2 failed")
        );
        assert_eq!(bars[30].ok_h + bars[30].fail_h, 0);
    }
}
