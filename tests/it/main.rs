//! Integration tests: the real binary in temporary homes.

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod abuse;
mod chaos;
mod chat;
mod cli;
mod clients;
mod concurrency;
mod crash;
mod daemon;
mod dashboard;
mod docs;
mod env;
mod follow;
mod forward;
mod hostile;
mod interop;
mod lineage;
mod login;
mod metrics;
mod notify;
mod prompt_cache;
mod props;
mod refresh;
mod service;
mod setup;
mod shield;
mod usage;
mod websocket;
