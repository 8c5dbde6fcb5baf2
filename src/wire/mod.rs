//! Wire formats: what the broker reads from and writes to the other side,
//! as plain functions and types with no I/O of their own: the socket
//! API's types, the public view of accounts, JWT claims, content codings,
//! the Responses API against the Codex dialect, and WebSocket frames and
//! messages.

pub mod chat;
pub mod chat_stream;
pub mod dashboard;
pub mod encoding;
pub mod jwt;
pub mod proto;
pub mod responses;
pub mod sse_scan;
pub mod usage;
pub mod view;
pub mod ws_frame;
pub mod ws_message;
pub mod ws_walk;
