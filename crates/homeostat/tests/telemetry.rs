//! Traces end to end: `homeostat run` and `homeostat agent` export over
//! OTLP (set by the standard `OTEL_*` variables) to a receiver built on the
//! OTLP protobufs (PyPI's `opentelemetry-proto`; `.ci/run` installs it).
//! One job's trace, started by its enqueuer, links the enqueue, the claim,
//! the agent's work (and the program it ran) and the completion.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::until_registered;
use common::{client, data_dir, get_json, ready};
use serde_json::{Value, json};

/// A process killed when dropped, so a failed assertion leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The receiver, killed when dropped.
struct Receiver {
    child: Child,
    spans: PathBuf,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(dir: &Path) -> Receiver {
    let has_proto = Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_proto,
        "python3 with opentelemetry-proto is missing: pip install opentelemetry-proto (.ci/run does)"
    );
    let spans = dir.join("spans.jsonl");
    let port_file = dir.join("receiver.port");
    let child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/otlp_receiver.py"
        ))
        .arg(&spans)
        .arg(&port_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    Receiver { child, spans, port }
}

/// The spans received so far.
fn received(r: &Receiver) -> Vec<Value> {
    std::fs::read_to_string(&r.spans)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Records the trace context the program was given.
const WORK: &str = r#"printf '%s' "$TRACEPARENT" > "$LOG.$HOMEOSTAT_JOB_ID"; echo '{"ok": true}'"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_enqueue_claim_work_and_completion() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let r = receiver(&dir);
    let endpoint = format!("http://127.0.0.1:{}", r.port);
    // Batches sent every 100 ms, not every 5 s.
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let c = client();
    let server = common::start_with(&dir.join("data"), &otel);
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&c, &server, &admin, "acme", 1).await;
    let _agent = Killed(
        Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
            .args(["agent", "--server", &server.url(""), "--queue", "work"])
            .args(["--name", "agent-0", "--bootstrap-token", &bootstrap])
            .arg("--state-file")
            .arg(dir.join("agent-0.json"))
            .envs(otel)
            .env("LOG", dir.join("work"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .args(["--exec", "sh", "-c", WORK])
            .spawn()
            .unwrap(),
    );
    until_registered(&dir, 1).await;

    // The enqueuer's own span, which the receiver never sees: the trace's
    // root.
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let root = format!("{:016x}", fastrand::u64(1..));
    let enqueued: Value = c
        .post(server.url("/v1/jobs"))
        .bearer_auth(&admin)
        .header("traceparent", format!("00-{trace_id}-{root}-01"))
        .json(&json!({"tenant_id": tenant["id"], "queue": "work", "kind": "scan"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = enqueued["job"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("not enqueued: {enqueued}"))
        .to_owned();

    let hang_guard = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let j = get_json(&c, server.url(&format!("/v1/jobs/{job}")), &admin).await;
        if j["state"] == "succeeded" {
            break j;
        }
        assert!(Instant::now() < hang_guard, "the job never succeeded: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Spans arrive as their processes' batches go out (the agent's work
    // span ends after its outcome was answered): wait for every one.
    let complete = "POST /v1/agent/jobs/{id}/complete";
    let expected = [
        "POST /v1/jobs",
        "job.enqueue",
        "job.claim",
        "job.run",
        complete,
    ];
    let trace = loop {
        let spans: Vec<Value> = received(&r)
            .into_iter()
            .filter(|s| s["trace_id"] == trace_id.as_str())
            .collect();
        if expected
            .iter()
            .all(|name| spans.iter().any(|s| s["name"] == *name))
        {
            break spans;
        }
        assert!(
            Instant::now() < hang_guard,
            "the trace never had all of {expected:?}: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_name: HashMap<&str, &Value> = trace
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s))
        .collect();
    let span = |name: &str| -> &Value {
        by_name
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span in the trace: {trace:#?}"))
    };
    let request = span("POST /v1/jobs");
    let enqueue = span("job.enqueue");
    let claim = span("job.claim");
    let work = span("job.run");
    let completion = span(complete);

    // enqueuer → enqueue request → (the job's enqueue, its claim) → the
    // agent's work → the completion.
    assert_eq!(request["parent_span_id"], root.as_str());
    assert_eq!(enqueue["parent_span_id"], request["span_id"]);
    assert_eq!(claim["parent_span_id"], request["span_id"]);
    assert_eq!(work["parent_span_id"], claim["span_id"]);
    assert_eq!(completion["parent_span_id"], work["span_id"]);
    for s in [request, enqueue, claim, completion] {
        assert_eq!(s["service"], "homeostat", "{s}");
    }
    assert_eq!(work["service"], "homeostat-agent");
    // The job, its tenant and its queue are attributes of each.
    for s in [enqueue, claim, work, completion] {
        assert_eq!(s["attributes"]["homeostat.job.id"], job.as_str(), "{s}");
        assert_eq!(s["attributes"]["homeostat.tenant.id"], tenant["id"], "{s}");
        assert_eq!(s["attributes"]["homeostat.queue"], "work", "{s}");
        assert_eq!(s["attributes"]["homeostat.job.kind"], "scan", "{s}");
    }
    assert_eq!(work["attributes"]["homeostat.job.outcome"], "succeeded");
    assert_eq!(work["attributes"]["homeostat.job.attempt"], 1);
    assert_eq!(claim["attributes"]["homeostat.job.attempt"], 1);
    assert_eq!(completion["attributes"]["http.response.status_code"], 200);
    // The work spans its program and the report of its outcome.
    assert!(work["start_ns"].as_u64() <= completion["start_ns"].as_u64());

    // The program continued the agent's work span; the job keeps the trace
    // context it was enqueued under (the enqueue request's span).
    let given = std::fs::read_to_string(dir.join(format!("work.{job}"))).unwrap();
    assert_eq!(
        given,
        format!("00-{trace_id}-{}-01", work["span_id"].as_str().unwrap())
    );
    assert_eq!(
        done["traceparent"],
        format!("00-{trace_id}-{}-01", request["span_id"].as_str().unwrap()).as_str()
    );

    // The controllers' runs are exported too, each a trace of its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !received(&r)
        .iter()
        .any(|s| s["name"] == "reconcile" && s["attributes"]["controller"] == "agent-health")
    {
        assert!(Instant::now() < deadline, "no controller run was exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `OTEL_*` setting homeostat cannot follow stops it with exit 2 and
/// the variable named, rather than leaving the operator without traces.
#[test]
fn an_unsupported_otel_setting_is_refused_by_name() {
    let dir = data_dir();
    let out = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{said}");
}
