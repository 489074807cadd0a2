//! The README's walkthrough, run as written: its `sh` blocks, in order, in
//! one bash session in an empty directory, with the built `homeostat` on
//! the PATH. A command that fails fails the test, so the README cannot
//! drift from what homeostat does.

mod common;

use std::process::Command;

/// The `sh` blocks of the section named `heading`.
fn blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).expect("the walkthrough section");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("a closed block");
        out.push(body[..close].to_owned());
        rest = &body[close + 3..];
    }
    out
}

#[test]
fn the_walkthrough_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let steps = blocks(&readme, "## A five-minute walkthrough");
    assert!(steps.len() >= 6, "the walkthrough lost its steps");
    let dir = common::data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("homeostat");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Whatever the walkthrough leaves running is stopped when it ends.
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2> /dev/null || true' EXIT\n{}",
        steps.join("\n")
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["180", "bash", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .env("PORT", common::free_port().to_string());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOMEOSTAT_")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the walkthrough failed ({:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- server log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    );
    // It did what the prose says.
    assert!(stdout.contains("killed agent"), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(stdout.contains("the chain is intact"), "{stdout}");
    assert!(
        stdout.contains("homeostat_jobs") || stdout.contains("homeostat_agents"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
