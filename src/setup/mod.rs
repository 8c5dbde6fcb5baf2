//! What `setup` changes in a client's own config file so that the client
//! reaches the forwarder, each keeping everything else of the file.

pub mod codex;
pub mod opencode;
pub mod pi;

/// The edited file and, one line each, what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub text: String,
    pub changes: Vec<String>,
}
