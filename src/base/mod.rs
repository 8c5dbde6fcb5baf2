//! Primitives the other layers stand on: private files and locks, boxes
//! for secrets, who is at the other end of a connection, HTTP connections
//! with a head timeout, where files live, JSON files, human display,
//! opening a browser.

pub mod display;
pub mod fsutil;
pub mod json;
pub mod logging;
pub mod open;
pub mod paths;
pub mod peer;
pub mod secret;
pub mod server;
