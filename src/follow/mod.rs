//! Follow mode: a broker (`serve --follow SOCKET`) that keeps no refresh
//! token at all. [`leader`] is the leader's socket API as a follower uses
//! it; [`sync`] keeps this home's accounts and Codex home in step with it.

pub mod leader;
pub mod sync;
