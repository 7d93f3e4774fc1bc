//! Shared helpers for integration tests (`mod common;` in a test file).
pub mod irc_chat;
pub mod ircd;
