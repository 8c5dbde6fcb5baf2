//! codex-broker: the single owner of a user's ChatGPT/Codex OAuth credentials
//! on a machine.
//!
//! The binary is a thin layer over this library: [`cli`] parses arguments and
//! calls into the layers below, each of which is testable on its own.
//!
//! - [`engine`]: the core: accounts and their store (as served, with what
//!   the disk has not taken yet), when a token is due, the refresh engine
//!   and its journal, routing, quota, settings.
//! - [`codex`]: Codex's own files: its auth.json, publishing to it,
//!   watching it.
//! - [`daemon`]: `serve`, which runs the servers and tasks below together,
//!   and the user service that starts it.
//! - [`socket`], [`forward`]: the socket API and the HTTP forwarder.
//! - [`follow`]: a broker that takes its tokens from a leader broker.
//! - [`oauth`]: the issuer's token endpoint and the login flows.
//! - [`wire`]: wire formats, with no I/O: the socket API's types, the
//!   public account view, JWT claims, the Responses API, WebSocket frames.
//! - [`base`]: primitives: files, secrets, peers, HTTP connections, paths,
//!   JSON files, display.

#![deny(unsafe_code)]

pub mod base;
pub mod cli;
pub mod codex;
pub mod daemon;
pub mod engine;
pub mod follow;
pub mod forward;
pub mod notify;
pub mod oauth;
pub mod setup;
pub mod socket;
pub mod wire;
