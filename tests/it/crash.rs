//! SIGKILL at random moments while the broker rewrites auth.json and the
//! account store: every file left behind is whole, old or new.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{TestAccount, TestEnv};

/// A small xorshift generator; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The contents auth.json and the store had after a whole switch.
type Versions = Vec<(Vec<u8>, Vec<u8>)>;

/// Asserts that auth.json and the store each hold one of `versions`, whole.
fn assert_old_or_new(env: &TestEnv, versions: &Versions, at: &str) {
    let auth = std::fs::read(env.auth_path()).unwrap();
    let store = std::fs::read(env.store_path()).unwrap();
    assert!(
        versions.iter().any(|(a, _)| *a == auth),
        "{at}: auth.json is torn:\n{}",
        String::from_utf8_lossy(&auth)
    );
    assert!(
        versions.iter().any(|(_, s)| *s == store),
        "{at}: the store is torn:\n{}",
        String::from_utf8_lossy(&store)
    );
}

fn switch(env: &TestEnv, id: &str) -> Command {
    let mut cmd = env.std_cmd();
    cmd.args(["accounts", "switch", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[test]
fn sigkill_mid_write_leaves_old_or_new_files() {
    let env = TestEnv::new();
    for id in ["acc-a", "acc-b"] {
        let path = env.dir.path().join(format!("{id}.json"));
        std::fs::write(&path, TestAccount::new(id).auth_json()).unwrap();
        env.ok(&["import", path.to_str().unwrap()]);
    }
    // The two states each switch produces, and how long a switch takes.
    let mut versions = Vec::new();
    let mut took = Duration::ZERO;
    for id in ["acc-a", "acc-b", "acc-a", "acc-b"] {
        let started = Instant::now();
        assert!(switch(&env, id).status().unwrap().success());
        took += started.elapsed();
        versions.push((
            std::fs::read(env.auth_path()).unwrap(),
            std::fs::read(env.store_path()).unwrap(),
        ));
    }
    assert_eq!(versions[0], versions[2]);
    assert_eq!(versions[1], versions[3]);
    versions.truncate(2);
    let window = (took / 4).as_micros() as u64;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}, kill window {window} µs");
    let mut rng = Rng(seed);
    let mut killed_alive = 0;
    let mut rounds = 0;
    const KILLS: usize = 250;
    while killed_alive < KILLS && rounds < 4 * KILLS {
        rounds += 1;
        let round = rounds;
        let target = if rng.next().is_multiple_of(2) {
            "acc-a"
        } else {
            "acc-b"
        };
        let mut child = switch(&env, target).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.next() % window.max(1)));
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().unwrap();
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            killed_alive += 1;
        }
        assert_old_or_new(&env, &versions, &format!("round {round} (seed {seed})"));
    }
    eprintln!("{killed_alive} of {rounds} kills hit a running process");
    assert_eq!(
        killed_alive, KILLS,
        "only {killed_alive} of {rounds} kills hit a running process (seed {seed})"
    );
    // The broker still works after all that.
    env.ok(&["accounts", "switch", "acc-a"]);
    assert_eq!(std::fs::read(env.auth_path()).unwrap(), versions[0].0);
}

/// A writer killed between its temporary copy and the rename leaves a
/// copy of credentials behind; the daemon removes old ones when it starts.
#[test]
fn stale_temporary_copies_of_credentials_are_removed_at_start() {
    let env = TestEnv::new();
    let account = TestAccount::new("acc-tmp");
    env.import_account(&account);
    let old = std::time::SystemTime::now() - Duration::from_secs(600);
    let plant = |dir: std::path::PathBuf, name: &str| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(old).unwrap();
        path
    };
    let store_copy = plant(env.broker_home(), ".accounts.json.k1LL3d.tmp");
    let auth_copy = plant(env.codex_home(), ".auth.json.k1LL3d.tmp");
    let young = plant(env.codex_home(), ".auth.json.wr1t1ng.tmp");
    std::fs::File::options()
        .write(true)
        .open(&young)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let unrelated = plant(env.codex_home(), ".config.toml.k1LL3d.tmp");
    let daemon = env.start_daemon(&["--no-forward"]);
    assert!(!store_copy.exists() && !auth_copy.exists());
    assert!(young.exists(), "a write may still be under way");
    assert!(unrelated.exists(), "not ours");
    daemon.stop();
}

/// `strace ARGS codex-broker accounts switch ID` with the environment
/// `env` gives the broker.
fn switch_under_strace(
    env: &TestEnv,
    strace: &std::path::Path,
    args: &[&str],
    id: &str,
) -> Command {
    let broker = env.std_cmd();
    let mut cmd = Command::new(strace);
    cmd.env_clear()
        .envs(broker.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(env.dir.path())
        .args(args)
        .arg("--")
        .arg(broker.get_program())
        .args(["accounts", "switch", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// strace, where the system has it.
fn strace() -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("strace"))
        .find(|p| p.is_file())
}

/// The syscalls of a write that a kill is aimed at: the temporary file's
/// creation, each write and sync, the rename, the removal of a copy.
const SYSCALLS: &[&str] = &[
    "openat",
    "write",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "ftruncate",
];

/// How many times a switch to `id` makes each of [`SYSCALLS`].
fn syscall_counts(env: &TestEnv, strace: &std::path::Path, id: &str) -> Vec<(&'static str, usize)> {
    let trace = env.dir.path().join("switch.trace");
    let trace_arg = trace.to_str().unwrap().to_owned();
    let set = format!("trace={}", SYSCALLS.join(","));
    let args = ["-f", "-qq", "-o", &trace_arg, "-e", &set];
    assert!(
        switch_under_strace(env, strace, &args, id)
            .status()
            .unwrap()
            .success()
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    SYSCALLS
        .iter()
        .map(|s| {
            let call = format!("{s}(");
            let calls = text
                .lines()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|c| c.starts_with(&call))
                })
                .count();
            (*s, calls)
        })
        .filter(|(_, calls)| *calls > 0)
        .collect()
}

/// A kill at the entry of every syscall a write makes, one at a time (strace
/// delivers SIGKILL as the call begins): whatever step of writing auth.json
/// or the store the kill meets, each file is whole, old or new. A writer
/// that truncated and rewrote a file in place would leave it torn here.
#[test]
fn sigkill_at_each_step_of_a_write_leaves_old_or_new_files() {
    let Some(strace) = strace() else {
        crate::support::skip("strace is not installed (apt-get install strace); it aims the kills");
        return;
    };
    let env = TestEnv::new();
    for id in ["acc-a", "acc-b"] {
        let path = env.dir.path().join(format!("{id}.json"));
        std::fs::write(&path, TestAccount::new(id).auth_json()).unwrap();
        env.ok(&["import", path.to_str().unwrap()]);
    }
    let mut versions = Vec::new();
    for id in ["acc-a", "acc-b"] {
        assert!(switch(&env, id).status().unwrap().success());
        versions.push((
            std::fs::read(env.auth_path()).unwrap(),
            std::fs::read(env.store_path()).unwrap(),
        ));
    }
    // From acc-b's files to acc-a's, and back: each switch writes both.
    let mut kills = 0;
    for (id, other) in [("acc-a", "acc-b"), ("acc-b", "acc-a")] {
        assert!(switch(&env, other).status().unwrap().success());
        let counts = syscall_counts(&env, &strace, id);
        assert!(
            counts.iter().any(|(s, _)| s.starts_with("rename")),
            "a switch renames: {counts:?}"
        );
        // Back to where the counted run started.
        assert!(switch(&env, other).status().unwrap().success());
        for (syscall, calls) in counts {
            for n in 1..=calls {
                let inject = format!("inject={syscall}:signal=KILL:when={n}");
                let args = [
                    "-f",
                    "-qq",
                    "-o",
                    "/dev/null",
                    "-e",
                    &format!("trace={syscall}"),
                    "-e",
                    &inject,
                ];
                let status = switch_under_strace(&env, &strace, &args, id)
                    .status()
                    .unwrap();
                let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                kills += usize::from(signal == Some(9));
                let at = format!("kill at {syscall} #{n} of a switch to {id}");
                assert_old_or_new(&env, &versions, &at);
                // The next kill starts from the same files.
                assert!(switch(&env, other).status().unwrap().success());
            }
        }
    }
    eprintln!("{kills} kills, each at the start of a syscall of a write");
    assert!(kills >= 10, "only {kills} kills landed");
    env.ok(&["accounts", "switch", "acc-a"]);
    assert_eq!(std::fs::read(env.auth_path()).unwrap(), versions[0].0);
}
