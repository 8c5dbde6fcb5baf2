//! Edits of `<home>/config.toml` by commands (`cachekeep on`, `dump on`):
//! one key is set and every other key, comment and blank line is kept; the
//! result must still be a valid config, or nothing is written.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, value};

use super::config::{CONFIG_FILE, Config, ConfigError};
use crate::base::fsutil;

/// Sets `key` (in `table`, when one is named) to `on` in the config of
/// `home`, creating the file when there is none.
pub fn set_bool(home: &Path, table: Option<&str>, key: &str, on: bool) -> Result<(), ConfigError> {
    let path = home.join(CONFIG_FILE);
    let invalid = |message: String| ConfigError::Invalid {
        path: path.clone(),
        message,
    };
    let old = fsutil::read_optional(&path)?.unwrap_or_default();
    let text = std::str::from_utf8(&old).map_err(|_| invalid("not UTF-8".into()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| invalid(e.message().to_owned()))?;
    let target = match table {
        None => doc.as_table_mut(),
        Some(name) => {
            let entry = doc.entry(name).or_insert_with(|| Item::Table(Table::new()));
            entry
                .as_table_mut()
                .ok_or_else(|| invalid(format!("`{name}` must be a table ([{name}])")))?
        }
    };
    target.insert(key, value(on));
    let new = doc.to_string();
    Config::parse(&path, new.as_bytes())?;
    fsutil::ensure_private_dir(home)?;
    fsutil::write_atomic(&path, new.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_set_and_the_rest_kept() {
        let home = tempfile::tempdir().unwrap();
        set_bool(home.path(), Some("cachekeep"), "enabled", true).unwrap();
        let read = || std::fs::read_to_string(home.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(read(), "[cachekeep]\nenabled = true\n");
        let mine = "# my broker\nusage = true\n\n[cachekeep]\n# warm often\ninterval = 60\nenabled = true\n";
        std::fs::write(home.path().join(CONFIG_FILE), mine).unwrap();
        set_bool(home.path(), Some("cachekeep"), "enabled", false).unwrap();
        set_bool(home.path(), None, "dump", true).unwrap();
        let text = read();
        assert!(
            text.starts_with("# my broker\nusage = true\ndump = true\n"),
            "{text}"
        );
        assert!(
            text.contains("# warm often\ninterval = 60\nenabled = false\n"),
            "{text}"
        );
        assert!(Config::load(home.path()).unwrap().dumps.enabled);
    }

    #[test]
    fn a_file_that_is_not_valid_is_left_as_it_is() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(CONFIG_FILE);
        for bad in ["cachekeep = 3\n", "[cachekeep\n", "refresh_ahead = -1\n"] {
            std::fs::write(&path, bad).unwrap();
            let e = set_bool(home.path(), Some("cachekeep"), "enabled", true).unwrap_err();
            assert!(e.to_string().contains("config.toml"), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
        }
    }
}
