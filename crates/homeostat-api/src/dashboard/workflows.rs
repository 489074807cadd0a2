//! `/workflows`: the newest workflows with their states; one workflow as a
//! graph of its steps (an SVG drawn here, no script or external asset) and
//! a table of them, each linked to its job.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use homeostat_model::{Workflow, WorkflowId};

use super::page::{Page, fragment, parse_id, short, when};
use super::problem::Problem;
use super::session::Session;
use crate::state::ApiState;

/// Workflows on the list.
const PAGE: u32 = 100;

/// One workflow of the list, formatted.
struct Row {
    id: String,
    short: String,
    name: String,
    state: &'static str,
    steps: u32,
    unfinished: u32,
    created: String,
}

#[derive(Template)]
#[template(path = "workflows.html")]
struct List {
    rows: Vec<Row>,
}

/// `GET /workflows`: a tenant key sees its tenant's alone.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let page = state
        .store
        .list_workflows(session.caller.tenant(), None, PAGE)
        .await?;
    let view = List {
        rows: page
            .items
            .iter()
            .map(|w| Row {
                id: w.id.to_string(),
                short: short(w.id),
                name: w.name.clone(),
                state: w.state.as_str(),
                steps: w.steps,
                unfinished: w.unfinished,
                created: when(w.created_at),
            })
            .collect(),
    };
    Ok(
        Page::live("Workflows", "Workflows", "/workflows", fragment(&view)?)
            .respond(&session, &headers),
    )
}

/// Where a step is drawn.
struct Node {
    name: String,
    job: String,
    state: String,
    x: u32,
    y: u32,
}

/// An edge from a need's right side to its step's left side.
struct Edge {
    d: String,
}

const NODE_W: u32 = 150;
const NODE_H: u32 = 34;
const GAP_X: u32 = 60;
const GAP_Y: u32 = 16;
const MARGIN: u32 = 10;

/// Lays out the steps left to right by depth (the longest chain of needs
/// before each), in submitted order within a column.
fn layout(w: &Workflow) -> (Vec<Node>, Vec<Edge>, u32, u32) {
    let index: HashMap<&str, usize> = w
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut depth = vec![0u32; w.steps.len()];
    // The graph is acyclic (refused otherwise at submission): relaxing as
    // many times as there are steps settles every depth.
    for _ in 0..w.steps.len() {
        let mut changed = false;
        for (i, s) in w.steps.iter().enumerate() {
            for n in &s.needs {
                if let Some(&p) = index.get(n.as_str())
                    && depth[i] < depth[p] + 1
                {
                    depth[i] = depth[p] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows_in: HashMap<u32, u32> = HashMap::new();
    let nodes: Vec<Node> = w
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let row = rows_in.entry(depth[i]).or_insert(0);
            let node = Node {
                name: s.name.clone(),
                job: s.job_id.to_string(),
                state: if s.skipped {
                    "skipped".into()
                } else {
                    s.state.to_string()
                },
                x: MARGIN + depth[i] * (NODE_W + GAP_X),
                y: MARGIN + *row * (NODE_H + GAP_Y),
            };
            *row += 1;
            node
        })
        .collect();
    let mut edges = Vec::new();
    for (i, s) in w.steps.iter().enumerate() {
        for n in &s.needs {
            if let Some(&p) = index.get(n.as_str()) {
                let (from, to) = (&nodes[p], &nodes[i]);
                let (x1, y1) = (from.x + NODE_W, from.y + NODE_H / 2);
                let (x2, y2) = (to.x, to.y + NODE_H / 2);
                let mid = (x1 + x2) / 2;
                edges.push(Edge {
                    d: format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"),
                });
            }
        }
    }
    let width = nodes.iter().map(|n| n.x + NODE_W).max().unwrap_or(0) + MARGIN;
    let height = nodes.iter().map(|n| n.y + NODE_H).max().unwrap_or(0) + MARGIN;
    (nodes, edges, width, height)
}

#[derive(Template)]
#[template(path = "workflow.html")]
struct Show {
    id: String,
    name: String,
    state: &'static str,
    created: String,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    width: u32,
    height: u32,
    node_w: u32,
    node_h: u32,
    steps: Vec<(String, String, String, String, &'static str)>,
}

/// `GET /workflows/{id}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id: WorkflowId = parse_id("workflow", &id)?;
    let w = state.store.workflow(id).await?;
    if !session.caller.sees(Some(w.tenant_id)) {
        return Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("workflow {id} not found"),
        ));
    }
    let (nodes, edges, width, height) = layout(&w);
    let steps = w
        .steps
        .iter()
        .zip(&nodes)
        .map(|(s, n)| {
            (
                s.name.clone(),
                s.job_id.to_string(),
                n.state.clone(),
                s.needs.join(", "),
                s.when.as_str(),
            )
        })
        .collect();
    let view = Show {
        id: w.id.to_string(),
        name: w.name.clone(),
        state: w.state.as_str(),
        created: when(w.created_at),
        nodes,
        edges,
        width,
        height,
        node_w: NODE_W,
        node_h: NODE_H,
        steps,
    };
    Ok(Page::live(
        format!("Workflow {}", w.name),
        "Workflows",
        format!("/workflows/{id}"),
        fragment(&view)?,
    )
    .respond(&session, &headers))
}
