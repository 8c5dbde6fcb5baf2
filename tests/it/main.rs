//! Integration tests: the real binary in temporary homes.

#[path = "../support/mod.rs"]
mod support;

mod interop;
