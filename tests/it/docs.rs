//! The help text and man pages, generated from the same clap definitions.

use std::collections::BTreeMap;
use std::path::Path;

fn walk(cmd: &mut clap::Command, prefix: &str, out: &mut String) {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix} {}", cmd.get_name())
    };
    out.push_str(&format!(
        "===== {name} --help\n{}\n",
        cmd.render_long_help()
    ));
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() != "help" {
            walk(sub, &name, out);
        }
    }
}

/// Every interface change shows up in review as a change of this snapshot.
#[test]
fn help_tree() {
    let mut cmd = codex_broker::cli::command().term_width(100);
    cmd.build();
    let mut text = String::new();
    walk(&mut cmd, "", &mut text);
    insta::assert_snapshot!("help_tree", text);
}

/// One page per command: `codex-broker.1`, `codex-broker-accounts.1`,
/// `codex-broker-accounts-switch.1`, ...
fn man_pages() -> BTreeMap<String, Vec<u8>> {
    fn render(cmd: clap::Command, name: String, pages: &mut BTreeMap<String, Vec<u8>>) {
        let cmd = cmd.name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .unwrap();
        pages.insert(format!("{name}.1"), page);
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                render(sub.clone(), format!("{name}-{}", sub.get_name()), pages);
            }
        }
    }
    let mut cmd = codex_broker::cli::command();
    cmd.build();
    let mut pages = BTreeMap::new();
    render(cmd, "codex-broker".into(), &mut pages);
    pages
}

/// `man/` holds exactly the generated pages. `UPDATE_MAN=1 cargo test
/// --test it docs::man_pages_are_current` rewrites them.
#[test]
fn man_pages_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = man_pages();
    if std::env::var_os("UPDATE_MAN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, page) in &pages {
            std::fs::write(dir.join(name), page).unwrap();
        }
    }
    let mut on_disk = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("man/ exists") {
        let entry = entry.unwrap();
        on_disk.insert(
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path()).unwrap(),
        );
    }
    let stale: Vec<&String> = pages
        .keys()
        .chain(on_disk.keys())
        .filter(|name| pages.get(*name) != on_disk.get(*name))
        .collect();
    assert!(
        stale.is_empty(),
        "man/ is stale ({stale:?}); regenerate it with: \
         UPDATE_MAN=1 cargo test --test it docs::man_pages_are_current"
    );
}
