//! What `setup codex` changes in Codex's config.toml so that Codex reaches
//! the forwarder: its two base URLs, and a login kept in the file (not the
//! keyring, where Codex would not read the auth.json the broker keeps).
//! Every other key, comment and blank line stays as it is.

use toml_edit::{DocumentMut, value};

use super::Plan;

/// The config `text` (empty: no file) pointed at the forwarder at `base`
/// (`http://127.0.0.1:1456`); an error names what is wrong with the file.
pub fn plan(text: &str, base: &str) -> Result<Plan, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("not TOML: {}", e.message()))?;
    let mut changes = Vec::new();
    let wanted = [
        ("openai_base_url", format!("{base}/codex")),
        ("chatgpt_base_url", format!("{base}/backend-api/")),
    ];
    for (key, url) in wanted {
        let current = doc.get(key).map(|item| item.as_str());
        match current {
            Some(Some(now)) if now == url => {}
            Some(None) => return Err(format!("`{key}` must be a string")),
            Some(Some(now)) => {
                changes.push(format!("{key}: \"{now}\" -> \"{url}\""));
                doc[key] = value(url);
            }
            None => {
                changes.push(format!("{key} = \"{url}\""));
                doc[key] = value(url);
            }
        }
    }
    let store = doc
        .get("cli_auth_credentials_store")
        .and_then(|i| i.as_str());
    if let Some(mode @ ("keyring" | "auto")) = store {
        changes.push(format!(
            "cli_auth_credentials_store: \"{mode}\" -> \"file\" (Codex must read the auth.json \
             the broker keeps fresh, not a keyring entry it refreshes on its own)"
        ));
        doc["cli_auth_credentials_store"] = value("file");
    }
    Ok(Plan {
        text: doc.to_string(),
        changes,
    })
}

/// The first Codex release that refreshes at the issuer auth.json names.
pub const PROVENANCE_SINCE: (u64, u64) = (0, 166);

/// The release a `codex --version` line names (`codex-cli 0.171.0`).
pub fn release(version_line: &str) -> Option<(u64, u64)> {
    let version = version_line.split_whitespace().last()?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:1456";

    #[test]
    fn the_urls_are_set_and_everything_else_kept() {
        let mine =
            "# my Codex\nmodel = \"gpt-5.1-codex\"\n\n[profiles.work]\nmodel = \"o3\" # fast\n";
        let plan = plan(mine, BASE).unwrap();
        assert_eq!(plan.changes.len(), 2);
        assert!(
            plan.text
                .starts_with("# my Codex\nmodel = \"gpt-5.1-codex\"\n"),
            "{}",
            plan.text
        );
        assert!(
            plan.text
                .contains("[profiles.work]\nmodel = \"o3\" # fast\n"),
            "{}",
            plan.text
        );
        assert!(
            plan.text
                .contains("openai_base_url = \"http://127.0.0.1:1456/codex\"")
        );
        assert!(
            plan.text
                .contains("chatgpt_base_url = \"http://127.0.0.1:1456/backend-api/\"")
        );
        let again = super::plan(&plan.text, BASE).unwrap();
        assert!(again.changes.is_empty(), "idempotent");
        assert_eq!(again.text, plan.text);
    }

    #[test]
    fn a_keyring_login_moves_to_the_file_and_other_urls_are_replaced() {
        let text = "cli_auth_credentials_store = \"auto\"\nopenai_base_url = \"https://x/v1\"\n";
        let plan = plan(text, BASE).unwrap();
        assert!(plan.changes[0].contains("\"https://x/v1\" -> \"http://127.0.0.1:1456/codex\""));
        assert!(
            plan.changes
                .iter()
                .any(|c| c.contains("\"auto\" -> \"file\""))
        );
        assert!(plan.text.contains("cli_auth_credentials_store = \"file\""));
        let kept = super::plan("cli_auth_credentials_store = \"file\"\n", BASE).unwrap();
        assert_eq!(kept.changes.len(), 2);
        assert!(plan_err("openai_base_url = 3\n").contains("must be a string"));
        assert!(plan_err("[broken\n").contains("not TOML"));
        assert_eq!(super::plan("", BASE).unwrap().changes.len(), 2);
    }

    #[test]
    fn releases_are_read_from_the_version_line() {
        assert_eq!(release("codex-cli 0.171.0"), Some((0, 171)));
        assert_eq!(release("codex-cli 0.165.2-alpha.1"), Some((0, 165)));
        assert!(release("codex-cli 0.165.0").unwrap() < PROVENANCE_SINCE);
        assert_eq!(release("nonsense"), None);
        assert_eq!(release(""), None);
    }

    fn plan_err(text: &str) -> String {
        plan(text, BASE).unwrap_err()
    }
}
