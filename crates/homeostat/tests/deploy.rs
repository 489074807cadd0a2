//! The deployment files in `deploy/`, checked by the programs that read
//! them: the systemd unit by `systemd-analyze verify` and `security`, the
//! Kubernetes manifests rendered by `kubectl kustomize` and validated
//! offline against the Kubernetes schemas (`kubernetes-validate`); and the
//! settings both give the server, by the server's own `config check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (.ci/run installs it)"))
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "homeostat-deploy-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether the server accepts these `HOMEOSTAT_*` settings, as `run`
/// would read them.
fn assert_settings_accepted(env: &[(String, String)], from: &str) {
    let empty = scratch().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let mut check = Command::new(assert_cmd::cargo::cargo_bin("homeostat"));
    check.arg("config").arg("check").arg(&empty);
    for (k, v) in env {
        check.env(k, v);
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "{from}: the server refuses its settings {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let unit = std::fs::read_to_string(deploy().join("systemd/homeostat.service")).unwrap();
    // verify checks that the program exists: this build's stands in for
    // the installed one.
    let binary = assert_cmd::cargo::cargo_bin("homeostat");
    let dir = scratch();
    let path = dir.join("homeostat.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/homeostat", binary.to_str().unwrap()),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let verified = run("systemd-analyze", &["verify", path]);
    assert!(verified.status.success(), "{verified:?}");
    let warnings = String::from_utf8_lossy(&verified.stderr);
    assert!(
        !warnings.contains("homeostat.service"),
        "warnings about the unit: {warnings}"
    );

    let security = run("systemd-analyze", &["security", "--offline=true", path]);
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for homeostat.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=homeostat",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == setting), "{setting}");
    }

    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "HOMEOSTAT_DATA_DIR"));
    assert_settings_accepted(&env, "the systemd unit");
}

/// The rendered overlay's documents, after `kubernetes-validate --strict`
/// passed them.
fn rendered(overlay: &str) -> Vec<Value> {
    let dir = deploy().join("kubernetes").join(overlay);
    let out = run("kubectl", &["kustomize", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let file = scratch().join(format!("{overlay}.yaml"));
    std::fs::write(&file, &out.stdout).unwrap();
    let validated = run(
        "kubernetes-validate",
        &["--strict", "--quiet", file.to_str().unwrap()],
    );
    assert!(
        validated.status.success(),
        "{overlay}: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).unwrap())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The container's settings, a Secret's value standing in as a URL.
fn container_env(workload: &Value) -> Vec<(String, String)> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(v) => v.to_owned(),
                None => "postgres://homeostat@db:5432/homeostat".to_owned(),
            };
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// Probes on the probes listener, and a grace that outlasts the drain.
fn assert_probes_and_grace(workload: &Value, env: &[(String, String)]) {
    let pod = &workload["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "probes");
    assert!(
        env.iter()
            .any(|(k, v)| k == "HOMEOSTAT_API__PROBES_LISTEN" && v.ends_with(":9090"))
    );
    let grace: u64 = env
        .iter()
        .find(|(k, _)| k == "HOMEOSTAT_SHUTDOWN_GRACE")
        .and_then(|(_, v)| v.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace,
        "the kubelet's SIGKILL comes after the drain"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

#[test]
fn the_postgres_overlay_runs_replicas_that_a_drain_takes_one_at_a_time() {
    let docs = rendered("postgres");
    let deployment = of_kind(&docs, "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let env = container_env(deployment);
    assert!(env.iter().any(|(k, _)| k == "HOMEOSTAT_DATABASE_URL"));
    assert_probes_and_grace(deployment, &env);
    let budget = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_settings_accepted(&env, "the postgres overlay");
}

#[test]
fn the_sqlite_overlay_runs_one_replica_on_a_volume_of_its_own() {
    let docs = rendered("sqlite");
    let set = of_kind(&docs, "StatefulSet");
    assert_eq!(set["spec"]["replicas"], 1);
    let env = container_env(set);
    let data_dir = env
        .iter()
        .find(|(k, _)| k == "HOMEOSTAT_DATA_DIR")
        .map(|(_, v)| v.clone())
        .unwrap();
    let mounts = set["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == data_dir.as_str() && m["name"] == "data")
    );
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_probes_and_grace(set, &env);
    assert_settings_accepted(&env, "the sqlite overlay");
}
