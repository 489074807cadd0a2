//! docs/architecture.md's list of crates and their arrows is the
//! workspace's: each line names exactly the homeostat crates that crate's
//! `Cargo.toml` depends on.

use std::collections::BTreeSet;

#[test]
fn the_documented_arrows_are_the_crates_dependencies() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let doc = std::fs::read_to_string(format!("{root}/docs/architecture.md")).unwrap();
    let documented: Vec<(String, BTreeSet<String>)> = doc
        .lines()
        .filter_map(|l| {
            let (from, to) = l.split_once("->")?;
            let from = from.trim();
            from.starts_with("homeostat").then(|| {
                let to = to.split_whitespace().map(str::to_owned).collect();
                (from.to_owned(), to)
            })
        })
        .collect();
    let crates: BTreeSet<String> = std::fs::read_dir(format!("{root}/crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = documented.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(
        listed, crates,
        "docs/architecture.md lists other crates than crates/"
    );
    for (name, arrows) in &documented {
        let manifest = std::fs::read_to_string(format!("{root}/crates/{name}/Cargo.toml")).unwrap();
        let deps = manifest
            .split("\n[dependencies]\n")
            .nth(1)
            .map(|rest| rest.split("\n[").next().unwrap_or_default())
            .unwrap_or_default();
        let actual: BTreeSet<String> = deps
            .lines()
            .filter_map(|l| {
                let name = l.split(['=', '.', ' ']).next()?.trim();
                name.starts_with("homeostat-").then(|| name.to_owned())
            })
            .collect();
        assert_eq!(
            arrows, &actual,
            "docs/architecture.md's arrows from {name} are not its dependencies"
        );
    }
}
