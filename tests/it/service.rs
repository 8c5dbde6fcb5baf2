//! `service`: the generated systemd unit and launchd agent, the shipped
//! copies under contrib/, and install/uninstall through the service manager.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use codex_broker::daemon::service::{Manager, Spec};

use crate::support::TestEnv;

fn exe() -> String {
    assert_cmd::cargo::cargo_bin("codex-broker")
        .to_string_lossy()
        .into_owned()
}

fn print(env: &TestEnv, flag: &str) -> String {
    env.render(&env.run(&["service", "print", flag]))
        .replace(&exe(), "[EXE]")
}

#[test]
fn printed_units() {
    let env = TestEnv::new();
    insta::assert_snapshot!("systemd_unit", print(&env, "--systemd"));
    insta::assert_snapshot!("launchd_plist", print(&env, "--launchd"));
}

#[test]
fn contrib_files_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let files = [
        (
            root.join("systemd/codex-broker.service"),
            Spec::contrib(Manager::Systemd).render(Manager::Systemd),
        ),
        (
            root.join("launchd/org.codex-broker.serve.plist"),
            Spec::contrib(Manager::Launchd).render(Manager::Launchd),
        ),
    ];
    for (path, text) in files {
        if std::env::var_os("UPDATE_CONTRIB").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            text,
            "{} is stale; regenerate it with: \
             UPDATE_CONTRIB=1 cargo test --test it service::contrib_files_are_current",
            path.display()
        );
    }
}

/// `systemd-analyze verify` accepts the generated unit and the shipped one
/// (where systemd is installed; CI installs it).
#[test]
fn systemd_analyze_verifies_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::support::skip("systemd-analyze is not installed");
        return;
    }
    let env = TestEnv::new();
    let runtime = env.dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let generated = env.dir.path().join("codex-broker.service");
    std::fs::write(&generated, env.ok(&["service", "print", "--systemd"])).unwrap();
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/codex-broker.service");
    for unit in [&generated, &shipped] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--user", "--man=no"])
            .arg(unit)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", env.user_home())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The shipped unit names /usr/local/bin/codex-broker, which need not
        // exist here; every other complaint counts.
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !(unit == &shipped && l.contains("/usr/local/bin/codex-broker")))
            .collect();
        assert!(complaints.is_empty(), "{}: {stderr}", unit.display());
        if unit == &generated {
            assert!(out.status.success(), "{stderr}");
        }
    }
}

#[test]
fn install_and_uninstall_drive_systemctl() {
    let env = TestEnv::new();
    // A systemctl that records how it was called.
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = env.dir.path().join("systemctl.calls");
    let fake = bin.join("systemctl");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let unit = env
        .user_home()
        .join(".config/systemd/user/codex-broker.service");
    let out = env
        .cmd()
        .env("PATH", &path)
        .args(["service", "install", "--systemd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", env.render(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Enabled and started"));
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        env.ok(&["service", "print", "--systemd"])
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "--user daemon-reload\n--user enable --now codex-broker.service\n"
    );

    let out = env
        .cmd()
        .env("PATH", &path)
        .args(["service", "uninstall", "--systemd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", env.render(&out));
    assert!(!unit.exists());
    assert!(
        std::fs::read_to_string(&calls)
            .unwrap()
            .ends_with("--user disable --now codex-broker.service\n--user daemon-reload\n")
    );
    let again = env.ok(&["service", "uninstall", "--systemd"]);
    assert!(again.contains("Not installed"), "{again}");

    // Without systemctl the file is written and the next step printed.
    let out = env
        .cmd()
        .env("PATH", "/nonexistent")
        .args(["service", "install", "--systemd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", env.render(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("systemctl --user enable --now"),
        "{}",
        env.render(&out)
    );
    assert!(unit.exists());
}
