//! The binary as a user runs it.

use assert_cmd::Command;

fn homeostat() -> Command {
    Command::cargo_bin("homeostat").unwrap()
}

#[test]
fn version_prints_the_crate_version() {
    let out = homeostat().arg("--version").assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("homeostat {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_explains_what_homeostat_is() {
    let out = homeostat().arg("--help").assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains("self-healing control plane"), "{stdout}");
    assert!(stdout.contains("--version"), "{stdout}");
}

#[test]
fn unknown_flags_fail_with_a_usage_error() {
    homeostat().arg("--no-such-flag").assert().code(2);
}

#[test]
fn a_database_file_that_cannot_be_opened_is_named_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("homeostat-unopenable-{}", std::process::id()));
    // In the database file's place, a directory: refused even to root.
    std::fs::create_dir_all(dir.join("homeostat.db")).unwrap();
    let out = homeostat()
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("HOMEOSTAT_DATABASE_URL")
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(2);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    let file = dir.join("homeostat.db");
    assert!(
        stderr.contains(&format!("cannot open {}", file.display()))
            && stderr.contains("Is a directory"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
