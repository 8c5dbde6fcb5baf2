//! codex-broker: the single owner of a user's ChatGPT/Codex OAuth credentials
//! on a machine.
//!
//! The binary is a thin layer over this library: [`cli`] parses arguments and
//! calls into the modules below, each of which is testable on its own.

#![deny(unsafe_code)]

pub mod cli;
pub mod codex_auth;
pub mod config;
pub mod daemon;
pub mod display;
pub mod engine;
pub mod forward;
pub mod fsutil;
pub mod fuzz;
pub mod journal;
pub mod json;
pub mod jwt;
pub mod leader;
pub mod oauth;
pub mod paths;
pub mod peer;
pub mod proto;
pub mod publish;
pub mod quota;
pub mod refresh;
pub mod routing;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod service;
pub mod shield;
pub mod socket;
pub mod store;
pub mod view;
pub mod watch;
