//! Wire formats: what the broker reads from and writes to the other side,
//! as plain functions and types with no I/O of their own.

pub mod jwt;
pub mod proto;
pub mod responses;
pub mod view;
