//! The desktop channel: the freedesktop notification service over the
//! D-Bus session bus (`org.freedesktop.Notifications.Notify`, app name
//! `codex-broker`, critical urgency for what needs the person soon); on
//! macOS, Notification Center.

use crate::engine::notify::Notice;

const APP: &str = "codex-broker";

/// Whether desktop notifications go out: as configured, else where a
/// session bus (or macOS) is there.
pub fn enabled(setting: Option<bool>) -> bool {
    setting.unwrap_or_else(|| cfg!(target_os = "macos") || session_bus_known())
}

/// A session bus named in the environment, or at its usual place (as a
/// systemd user manager runs it).
fn session_bus_known() -> bool {
    let named = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty());
    let usual = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists());
    named || usual
}

fn summary(notice: &Notice) -> String {
    let what = match notice.event.as_str() {
        "needs_login" => "an account needs a new login",
        "refresh_interrupted" => "a refresh was interrupted",
        "quota_low" => "quota running low",
        "quota_exhausted" => "every account has used its quota",
        "rotation_unsaved" => "a token rotation is not saved",
        "leader_unreachable" => "the leader cannot be reached",
        "recovered" => "recovered",
        _ => "notice",
    };
    format!("{APP}: {what}")
}

/// Shows `notice` on the desktop.
#[cfg(not(target_os = "macos"))]
pub async fn send(notice: &Notice) -> Result<(), String> {
    use std::collections::HashMap;

    use zbus::zvariant::Value;
    let bus = zbus::Connection::session()
        .await
        .map_err(|e| format!("no session bus: {e}"))?;
    let urgency: u8 = if notice.critical() { 2 } else { 1 };
    let hints: HashMap<&str, Value<'_>> = HashMap::from([("urgency", Value::U8(urgency))]);
    let actions: Vec<&str> = Vec::new();
    bus.call_method(
        Some("org.freedesktop.Notifications"),
        "/org/freedesktop/Notifications",
        Some("org.freedesktop.Notifications"),
        "Notify",
        &(
            APP,
            0u32,
            "",
            summary(notice),
            &notice.message,
            actions,
            hints,
            -1i32,
        ),
    )
    .await
    .map_err(|e| format!("the notification service: {e}"))?;
    Ok(())
}

/// Shows `notice` in Notification Center.
#[cfg(target_os = "macos")]
pub async fn send(notice: &Notice) -> Result<(), String> {
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let script = format!(
        "display notification {} with title {}",
        quoted(&notice.message),
        quoted(&summary(notice))
    );
    let out = tokio::process::Command::new("osascript")
        .args(["-e", &script])
        .output()
        .await
        .map_err(|e| format!("osascript: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("osascript exited with {}", out.status))
    }
}
