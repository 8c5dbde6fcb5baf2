//! User service definitions that run `codex-broker serve`: a systemd user
//! unit and a launchd agent.

use std::path::{Path, PathBuf};

/// The systemd unit's file name.
pub const SYSTEMD_UNIT: &str = "codex-broker.service";
/// The launchd agent's label; its plist is `<label>.plist`.
pub const LAUNCHD_LABEL: &str = "org.codex-broker.serve";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// The service manager of this operating system.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// What a service runs and which directories it writes.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The `codex-broker` binary.
    pub exe: String,
    /// Arguments after `serve`.
    pub args: Vec<String>,
    /// Directories the daemon writes: broker home, Codex home, socket
    /// directory (systemd specifiers allowed in a systemd unit). systemd
    /// makes them writable only if they exist when the service starts;
    /// `%t/codex-broker` is created by systemd (`RuntimeDirectory`).
    pub writable: Vec<String>,
    /// Where launchd sends the daemon's log; none for systemd (journal).
    pub log: Option<String>,
}

impl Spec {
    /// The service for the locations this command resolved, pinned by flags
    /// so that the service and the command line agree.
    pub fn for_paths(
        exe: &Path,
        home: &Path,
        codex_home: &Path,
        socket: &Path,
        log: Option<&Path>,
    ) -> Spec {
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let socket_dir = socket.parent().map_or_else(|| text(socket), text);
        Spec {
            exe: text(exe),
            args: vec![
                "--home".into(),
                text(home),
                "--codex-home".into(),
                text(codex_home),
                "--socket".into(),
                text(socket),
            ],
            writable: vec![text(home), text(codex_home), socket_dir],
            log: log.map(text),
        }
    }

    /// The generic service shipped under `contrib/`: default locations.
    pub fn contrib(manager: Manager) -> Spec {
        Spec {
            exe: "/usr/local/bin/codex-broker".into(),
            args: Vec::new(),
            writable: match manager {
                Manager::Systemd => vec!["%h/.config/codex-broker".into(), "%h/.codex".into()],
                Manager::Launchd => Vec::new(),
            },
            log: None,
        }
    }

    pub fn render(&self, manager: Manager) -> String {
        match manager {
            Manager::Systemd => self.systemd_unit(),
            Manager::Launchd => self.launchd_plist(),
        }
    }

    fn systemd_unit(&self) -> String {
        let command = std::iter::once(self.exe.as_str())
            .chain(std::iter::once("serve"))
            .chain(self.args.iter().map(String::as_str))
            .map(systemd_quote)
            .collect::<Vec<_>>()
            .join(" ");
        let writable = self
            .writable
            .iter()
            .map(|p| format!("-{}", systemd_quote(p)))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "\
[Unit]
Description=codex-broker: one refresh authority for ChatGPT/Codex credentials
Documentation=man:codex-broker-serve(1)

[Service]
Type=notify
ExecStart={command}
Restart=on-failure
RestartSec=5s
TimeoutStopSec=15s
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={writable}
RuntimeDirectory=codex-broker
RuntimeDirectoryMode=0700
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=default.target
"
        )
    }

    fn launchd_plist(&self) -> String {
        let args: String = std::iter::once(self.exe.as_str())
            .chain(std::iter::once("serve"))
            .chain(self.args.iter().map(String::as_str))
            .map(|a| format!("    <string>{}</string>\n", xml_escape(a)))
            .collect();
        let log = self.log.as_deref().map_or_else(String::new, |log| {
            let log = xml_escape(log);
            format!(
                "  <key>StandardOutPath</key>\n  <string>{log}</string>\n  <key>StandardErrorPath</key>\n  <string>{log}</string>\n"
            )
        });
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>
{args}  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>5</integer>
  <key>ProcessType</key>
  <string>Background</string>
  <key>Umask</key>
  <integer>63</integer>
{log}</dict>
</plist>
"#
        )
    }
}

/// Where the service file goes for `manager`, below the user's home.
pub fn unit_path(manager: Manager, user_home: &Path, xdg_config: Option<PathBuf>) -> PathBuf {
    match manager {
        Manager::Systemd => xdg_config
            .unwrap_or_else(|| user_home.join(".config"))
            .join("systemd/user")
            .join(SYSTEMD_UNIT),
        Manager::Launchd => user_home
            .join("Library/LaunchAgents")
            .join(format!("{LAUNCHD_LABEL}.plist")),
    }
}

/// A word for a systemd command line or path list: quoted when it holds
/// anything but plain characters; `%` and `$` escaped.
fn systemd_quote(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    // Specifiers such as %h are meant literally in the shipped unit.
    let escaped = if word.starts_with("%h/") || word.starts_with("%t/") {
        word.to_owned()
    } else {
        escaped
    };
    if !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.,:+=@%$".contains(c))
    {
        return escaped;
    }
    format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(systemd_quote("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(systemd_quote("/home/a b/x"), "\"/home/a b/x\"");
        assert_eq!(systemd_quote("/p/100%"), "/p/100%%");
        assert_eq!(systemd_quote("/p/$HOME"), "/p/$$HOME");
        assert_eq!(systemd_quote("%h/.codex"), "%h/.codex");
        assert_eq!(systemd_quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(xml_escape("a&<b>"), "a&amp;&lt;b&gt;");
    }
}
