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

/// The Dockerfile's stages: each one's instructions, continuation lines
/// joined, comments dropped.
fn stages(dockerfile: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        if op == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("a FROM first")
            .push((op.to_owned(), rest.trim().to_owned()));
    }
    stages
}

fn json_args(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn sh(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

/// The image's runtime stage, assembled as `deploy/container/Dockerfile`
/// says and run under chroot as its user (there is no container runtime
/// on these machines): the server starts on its volume, its health check
/// passes, its database is the user's alone, and SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_images_runtime_stage_runs_as_its_user_on_its_volume() {
    let uid = String::from_utf8(run("id", &["-u"]).stdout).unwrap();
    if uid.trim() != "0" {
        eprintln!("SKIPPED: chroot needs root");
        return;
    }
    let dockerfile = std::fs::read_to_string(deploy().join("container/Dockerfile")).unwrap();
    let stages = stages(&dockerfile);
    let (build, runtime) = (&stages[0], stages.last().unwrap());
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let binary = assert_cmd::cargo::cargo_bin("homeostat");
    let binary = binary.to_str().unwrap();
    let scratch = scratch();
    let out = scratch.join("out");
    let root = scratch.join("root");

    // The build stage's output: its `install` lines, this build's binary
    // standing in for the release one.
    for (op, rest) in build {
        if op != "RUN" || !rest.starts_with("install ") {
            continue;
        }
        for command in rest.split("&&").map(str::trim) {
            let args: Vec<String> = command
                .split_whitespace()
                .skip(1)
                .map(|a| {
                    a.replace("target/release/homeostat", binary)
                        .replace("/out/", &format!("{}/", out.display()))
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sh("install", &args);
        }
    }

    // The base image: distroless's cc image is glibc and libgcc; the
    // libraries this binary links, and /tmp.
    let ldd = String::from_utf8(run("ldd", &[binary]).stdout).unwrap();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    sh(
        "install",
        &["-d", "-m", "1777", root.join("tmp").to_str().unwrap()],
    );

    let mut env: Vec<(String, String)> = Vec::new();
    let (mut user, mut health, mut entrypoint, mut cmd) = (None, None, vec![], vec![]);
    let (mut volumes, mut exposed) = (vec![], vec![]);
    for (op, rest) in &runtime[1..] {
        match op.as_str() {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(words[0], "--from=build", "{rest}");
                let (owner, paths) = match words[1].strip_prefix("--chown=") {
                    Some(owner) => (owner, &words[2..]),
                    None => ("0:0", &words[1..]),
                };
                let from = out.join(paths[0].trim_start_matches("/out/"));
                let to = root.join(paths[1].trim_start_matches('/'));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                sh("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
                sh("chown", &["-R", owner, to.to_str().unwrap()]);
            }
            "ENV" => {
                let (k, v) = rest.split_once('=').unwrap();
                env.push((k.to_owned(), v.to_owned()));
            }
            "USER" => user = Some(rest.clone()),
            "VOLUME" => volumes.push(rest.clone()),
            "EXPOSE" => exposed.push(rest.clone()),
            "HEALTHCHECK" => health = Some(json_args(rest.split_once("CMD ").unwrap().1)),
            "ENTRYPOINT" => entrypoint = json_args(rest),
            "CMD" => cmd = json_args(rest),
            "STOPSIGNAL" => assert_eq!(rest, "SIGTERM", "the server drains on SIGTERM"),
            other => panic!("the runtime stage's {other} is not assembled by this test: teach it"),
        }
    }
    let user = user.expect("a USER: never root");
    assert_ne!(user.split(':').next(), Some("0"));
    let listen = env
        .iter()
        .find(|(k, _)| k == "HOMEOSTAT_LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(exposed, [listen.rsplit(':').next().unwrap()]);
    let data_dir = env
        .iter()
        .find(|(k, _)| k == "HOMEOSTAT_DATA_DIR")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        volumes,
        [data_dir.as_str()],
        "the data directory is the volume"
    );
    let owner = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        (format!("{}:{}", m.uid(), m.gid()), m.mode() & 0o777)
    };
    let volume = root.join(data_dir.trim_start_matches('/'));
    assert_eq!(owner(&volume), (user.clone(), 0o700));

    // `docker run -e HOMEOSTAT_LISTEN=…`: a free port on this machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.push(("HOMEOSTAT_LISTEN".into(), format!("127.0.0.1:{port}")));
    // Found on this process's PATH: the command's own environment is the
    // image's alone.
    let chroot = std::env::var("PATH")
        .unwrap()
        .split(':')
        .map(|d| Path::new(d).join("chroot"))
        .find(|p| p.exists())
        .expect("chroot");
    let in_image = |args: &[String]| {
        let mut c = Command::new(&chroot);
        c.arg(format!("--userspec={user}"))
            .arg(&root)
            .args(args)
            .env_clear()
            .envs(env.iter().cloned());
        c
    };
    let mut server = in_image(&[entrypoint.clone(), cmd].concat())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = health.expect("a HEALTHCHECK");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let probe = in_image(&health).output().unwrap();
        if probe.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && server.try_wait().unwrap().is_none(),
            "never healthy: {probe:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let db = volume.join("homeostat.db");
    assert_eq!(
        owner(&db),
        (user.clone(), 0o600),
        "the database is the user's alone"
    );

    sh("kill", &["-TERM", &server.id().to_string()]);
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut printed = String::new();
    use std::io::Read;
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    assert!(printed.lines().any(|l| l.starts_with("hsk_")), "{printed}");
    let _ = std::fs::remove_dir_all(&scratch);
}
