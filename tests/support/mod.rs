//! Shared test support: temporary homes, the binary under test, generated
//! credentials and fake upstreams.

#![allow(dead_code)]

pub mod browser;
pub mod fake_upstream;
pub mod raw_upstream;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use codex_broker::wire::jwt::{chatgpt_claims, encode_unsigned};
use tempfile::TempDir;

/// Seconds since the epoch.
/// Says why a test cannot run here. Under CI (`CI=true`), where every
/// tool and root are provided, that is a failure, so that a green run
/// means every test ran.
pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "under CI every test runs, but this one cannot: {why}"
    );
    eprintln!("skipped: {why}");
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A user with an empty HOME in a temporary directory; the broker home and
/// Codex home take their default places below it.
pub struct TestEnv {
    pub dir: TempDir,
    /// Extra environment for every command, such as the issuer to use.
    pub vars: Vec<(String, String)>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("codex-broker-test.")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("user")).unwrap();
        // Until a test names its upstreams, they are a loopback port that
        // refuses: nothing a daemon dials ever leaves the machine.
        let nowhere = "http://127.0.0.1:9".to_owned();
        TestEnv {
            dir,
            vars: vec![
                ("CODEX_BROKER_ISSUER".into(), nowhere.clone()),
                (
                    "CODEX_BROKER_CHATGPT_BASE".into(),
                    format!("{nowhere}/backend-api"),
                ),
            ],
        }
    }

    /// A user whose broker talks to `upstream` as its issuer.
    pub fn with_issuer(upstream: &fake_upstream::FakeUpstream) -> TestEnv {
        let mut env = TestEnv::new();
        env.vars
            .push(("CODEX_BROKER_ISSUER".into(), upstream.url()));
        env
    }

    /// A user whose broker talks to `upstream` as its issuer, with
    /// `account` (known to the issuer) imported through auth.json.
    pub fn with_account(upstream: &fake_upstream::FakeUpstream, account: &TestAccount) -> TestEnv {
        let env = TestEnv::with_issuer(upstream);
        upstream.add_account(account);
        env.import_account(account);
        env
    }

    /// A user whose broker talks to `upstream` as its issuer and its
    /// ChatGPT backend.
    pub fn with_backend(upstream: &fake_upstream::FakeUpstream) -> TestEnv {
        let mut env = TestEnv::with_issuer(upstream);
        env.vars.push((
            "CODEX_BROKER_CHATGPT_BASE".into(),
            format!("{}/backend-api", upstream.url()),
        ));
        env
    }

    /// A user whose broker talks to `upstream` as issuer and backend, with
    /// `account` (known to the issuer) imported through auth.json.
    pub fn with_backend_account(
        upstream: &fake_upstream::FakeUpstream,
        account: &TestAccount,
    ) -> TestEnv {
        let env = TestEnv::with_backend(upstream);
        upstream.add_account(account);
        env.import_account(account);
        env
    }

    /// A user whose broker talks to `upstream` as issuer and backend, with
    /// a main account (`acc-main`, in auth.json) and a fallback
    /// (`acc-fallback`).
    pub fn with_main_and_fallback(
        upstream: &fake_upstream::FakeUpstream,
    ) -> (TestEnv, TestAccount, TestAccount) {
        let env = TestEnv::with_backend(upstream);
        let main = TestAccount::new("acc-main");
        let fallback = TestAccount::new("acc-fallback");
        for a in [&main, &fallback] {
            upstream.add_account(a);
        }
        env.import_account(&main);
        env.import_other(&fallback);
        (env, main, fallback)
    }

    pub fn user_home(&self) -> PathBuf {
        self.dir.path().join("user")
    }

    pub fn broker_home(&self) -> PathBuf {
        self.user_home().join(".config/codex-broker")
    }

    /// Sets `name` in the environment of every command and daemon.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.push((name.into(), value.into()));
    }

    /// Writes the broker's config.toml.
    pub fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.broker_home()).unwrap();
        std::fs::write(self.broker_home().join("config.toml"), text).unwrap();
    }

    pub fn codex_home(&self) -> PathBuf {
        self.user_home().join(".codex")
    }

    pub fn auth_path(&self) -> PathBuf {
        self.codex_home().join("auth.json")
    }

    pub fn store_path(&self) -> PathBuf {
        self.broker_home().join("accounts.json")
    }

    /// The binary with a cleared environment and only this user's HOME.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("codex-broker").unwrap();
        cmd.env_clear()
            .env("HOME", self.user_home())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
        cmd
    }

    /// The same command as a plain `std::process::Command`, for spawning.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("codex-broker"));
        cmd.env_clear()
            .env("HOME", self.user_home())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
        cmd
    }

    /// Imports `account` as Codex would have written it, through auth.json.
    pub fn import_account(&self, account: &TestAccount) {
        self.write_codex_auth(account);
        self.ok(&["import"]);
    }

    /// Imports `account` from an auth.json of its own: it joins the store
    /// (as a fallback, if there is a main account) and auth.json stays as
    /// it is.
    pub fn import_other(&self, account: &TestAccount) {
        let path = self.dir.path().join(format!("{}.json", account.id));
        std::fs::write(&path, account.auth_json()).unwrap();
        self.ok(&["import", path.to_str().unwrap()]);
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs the binary and asserts it succeeded, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}",
            self.render(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Exit status, stdout and stderr in one text, with the temporary
    /// directory replaced by `[TMP]`, for snapshots.
    pub fn render(&self, out: &Output) -> String {
        let text = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            out.status.code().map_or("signal".into(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let dir = self.dir.path().to_string_lossy().into_owned();
        let real = self
            .dir
            .path()
            .canonicalize()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| dir.clone());
        text.replace(&real, "[TMP]").replace(&dir, "[TMP]")
    }

    pub fn snapshot(&self, args: &[&str]) -> String {
        let out = self.run(args);
        self.render(&out)
    }

    /// Writes a Codex-format auth.json for `account` into the Codex home.
    pub fn write_codex_auth(&self, account: &TestAccount) {
        std::fs::create_dir_all(self.codex_home()).unwrap();
        std::fs::write(self.auth_path(), account.auth_json()).unwrap();
    }

    pub fn read_auth(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.auth_path()).unwrap()).unwrap()
    }

    /// The stored account `id`, as JSON.
    pub fn stored_account(&self, id: &str) -> serde_json::Value {
        self.read_store()["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no account {id} in the store"))
    }

    pub fn read_store(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.store_path()).unwrap()).unwrap()
    }
}

/// A ChatGPT account whose tokens the tests make up.
#[derive(Debug, Clone)]
pub struct TestAccount {
    pub id: String,
    pub email: String,
    pub plan: String,
    /// Access-token expiry, unix seconds.
    pub expires_at: i64,
    pub refresh_token: String,
    /// When the tokens were last refreshed, unix seconds.
    pub refreshed_at: i64,
}

impl TestAccount {
    pub fn new(id: &str) -> TestAccount {
        TestAccount {
            id: id.into(),
            email: format!("{id}@example.com"),
            plan: "plus".into(),
            expires_at: now() + 3600,
            refresh_token: format!("rt-{id}-0"),
            refreshed_at: now() - 300,
        }
    }

    pub fn expiring_in(mut self, seconds: i64) -> Self {
        self.expires_at = now() + seconds;
        self
    }

    /// Issued (`iat`) when the tokens were last refreshed.
    pub fn access_token(&self) -> String {
        let mut claims = chatgpt_claims(&self.id, &self.plan, &self.email, self.expires_at);
        claims["iat"] = self.refreshed_at.into();
        encode_unsigned(&claims)
    }

    pub fn id_token(&self) -> String {
        encode_unsigned(&chatgpt_claims(
            &self.id,
            &self.plan,
            &self.email,
            self.expires_at,
        ))
    }

    pub fn auth_json(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token(),
                "access_token": self.access_token(),
                "refresh_token": self.refresh_token,
                "account_id": self.id,
            },
            "last_refresh": codex_broker::codex::auth::format_timestamp(
                time::OffsetDateTime::from_unix_timestamp(self.refreshed_at).unwrap()
            ),
        }))
        .unwrap()
    }
}

/// Where the real Codex CLI is: `CODEX_BIN`, which `scripts/test` sets to
/// the newest release it installs.
pub fn codex_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CODEX_BIN") {
        return PathBuf::from(bin);
    }
    panic!(
        "the Codex CLI is not named: run scripts/test (it installs it from npm), or set CODEX_BIN"
    );
}

/// Every Codex release the interop tests cover (`CODEX_BINS`, set by
/// `scripts/test`, colon-separated), else the one of [`codex_bin`].
pub fn codex_releases() -> Vec<PathBuf> {
    match std::env::var_os("CODEX_BINS") {
        Some(bins) => std::env::split_paths(&bins).collect(),
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "under CI every Codex release is tested: run scripts/test"
            );
            vec![codex_bin()]
        }
    }
}

/// OpenCode's binary, which `scripts/test` installs and names in
/// `OPENCODE_BIN`.
pub fn opencode_bin() -> PathBuf {
    match std::env::var_os("OPENCODE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => panic!(
            "OpenCode is not named: run scripts/test (it installs it from npm), or set OPENCODE_BIN"
        ),
    }
}

/// The Pi coding agent's CLI script (run with node), which `scripts/test`
/// installs and names in `PI_CLI`.
pub fn pi_cli() -> PathBuf {
    match std::env::var_os("PI_CLI") {
        Some(cli) => PathBuf::from(cli),
        None => {
            panic!("Pi is not named: run scripts/test (it installs it from npm), or set PI_CLI")
        }
    }
}

/// The Python of the virtual environment `scripts/test` makes with the
/// OpenAI SDK and `llm` (or the one `CODEX_BROKER_PYTHON` names).
pub fn python_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CODEX_BROKER_PYTHON") {
        return PathBuf::from(bin);
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        installed.exists(),
        "the Python clients are not installed at {}: run scripts/test (it installs them from \
         PyPI), or set CODEX_BROKER_PYTHON",
        installed.display()
    );
    installed
}

/// A running `codex-broker serve`, killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl TestEnv {
    /// Where the daemon's socket is by default (no XDG_RUNTIME_DIR).
    pub fn socket_path(&self) -> PathBuf {
        self.broker_home().join("run/broker.sock")
    }

    /// Imports `account` (whose token is due for a refresh), starts the
    /// daemon, and waits until it has rotated the account's tokens into the
    /// store and auth.json.
    pub fn start_daemon_refreshing(
        &self,
        upstream: &fake_upstream::FakeUpstream,
        account: &TestAccount,
    ) -> Daemon {
        upstream.add_account(account);
        self.import_account(account);
        let daemon = self.start_daemon(&[]);
        let rotated = format!("rt-{}-1", account.id);
        let done =
            upstream.wait_for_requests("/oauth/token", 1, std::time::Duration::from_secs(10))
                && wait_until(std::time::Duration::from_secs(5), || {
                    self.read_store()["accounts"][0]["tokens"]["refresh_token"] == rotated
                        && self.read_auth()["tokens"]["refresh_token"] == rotated
                })
                .is_some();
        assert!(done, "the daemon did not refresh:\n{}", daemon.log());
        daemon
    }

    /// Starts `serve` with `args` (the forwarder on a free port unless they
    /// say otherwise) and waits for its READY=1 notification.
    pub fn start_daemon(&self, args: &[&str]) -> Daemon {
        let mut args = args.to_vec();
        if !args.contains(&"--listen") && !args.contains(&"--no-forward") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let args = &args[..];
        use std::os::unix::net::UnixDatagram;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify_path = self.dir.path().join(format!("notify-{n}.sock"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let log = self.dir.path().join(format!("daemon-{n}.log"));
        let child = self
            .std_cmd()
            .arg("serve")
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let socket = args
            .iter()
            .position(|a| *a == "--socket")
            .map_or_else(|| self.socket_path(), |i| PathBuf::from(args[i + 1]));
        let mut daemon = Daemon { child, socket, log };
        let mut buf = [0u8; 256];
        // A signal to this process (a child of another test ending) may
        // interrupt the wait: that is no answer, wait on.
        let ready = loop {
            match notify.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match ready {
            Ok(n) if buf[..n].starts_with(b"READY=1") => daemon,
            other => {
                let _ = daemon.child.kill();
                panic!(
                    "the daemon did not get ready ({other:?}):\n{}",
                    daemon.log()
                );
            }
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Where the daemon's stderr goes; it outlives the daemon.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }

    /// One request over the socket: the status and the JSON body.
    pub fn api(&self, method: &str, target: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, bytes) = self.api_raw(method, target, body);
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    /// One request over the socket: the status and the body as it came.
    pub fn api_raw(&self, method: &str, target: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut c = codex_broker::socket::client::Connection::open(&self.socket)
                .await
                .unwrap();
            let (status, bytes) = c
                .send(
                    method.parse().unwrap(),
                    target,
                    &[],
                    body.map(|b| b.as_bytes().to_vec()),
                )
                .await
                .unwrap();
            (status, bytes.to_vec())
        })
    }

    /// The forwarder's base URL.
    pub fn forwarder(&self) -> String {
        let port = self.get("/v1/health")["forwarder"]["port"]
            .as_u64()
            .unwrap();
        format!("http://127.0.0.1:{port}")
    }

    pub fn get(&self, target: &str) -> serde_json::Value {
        let (status, body) = self.api("GET", target, None);
        assert_eq!(status, 200, "GET {target}: {body}");
        body
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, looking every 5 ms, for at most `limit`.
/// Returns how long it took, or `None` when it never held.
pub fn wait_until(
    limit: std::time::Duration,
    mut check: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    wait_for(limit, || check().then(|| start.elapsed()))
}

/// Waits until `check` gives a value, looking every 5 ms, for at most
/// `limit`: the value, or `None` when none came.
pub fn wait_for<T>(limit: std::time::Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Binds 127.0.0.1:0 and runs `serve` with the listener on a thread and
/// runtime of its own; returns the bound address.
pub fn serve_on_loopback<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            serve(tokio::net::TcpListener::from_std(listener).unwrap()).await;
        });
    });
    addr
}

/// The names of the files in `dir`, sorted (none when it is missing).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A loopback port free when asked (for servers that cannot be told to
/// pick one and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where `tool` is on the PATH, if it is.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// Re-runs the calling test inside `unshare -rn` with only loopback up, so
/// nothing it starts can reach another host. Returns true inside.
pub fn isolated(test: &str) -> bool {
    if std::env::var_os("CODEX_BROKER_TEST_NETNS").is_some() {
        return true;
    }
    let name = test.split_once("::").map_or(test, |(_, rest)| rest);
    let status = std::process::Command::new("unshare")
        .args(["-rn", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("CODEX_BROKER_TEST_NETNS", "1")
        .status()
        .expect("unshare runs");
    assert!(status.success(), "the isolated run of {name} failed");
    false
}

macro_rules! isolated {
    ($name:ident) => {
        if !$crate::support::isolated(concat!(module_path!(), "::", stringify!($name))) {
            return;
        }
    };
}
