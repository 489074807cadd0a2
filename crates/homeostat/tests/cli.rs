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
