//! Codex's own files: `$CODEX_HOME/auth.json` read and written the way
//! Codex does, accounts published to it, and the watcher that adopts what
//! `codex login` writes.

pub mod auth;
pub mod provenance;
pub mod publish;
pub mod watch;
