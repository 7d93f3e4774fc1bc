//! Shared helpers for integration tests (`mod common;` in a test file). Each test file uses
//! only some of them.
#![allow(dead_code)]
pub mod binary;
pub mod bulk;
pub mod echo;
pub mod fake;
pub mod fake_irc;
pub mod irc_chat;
pub mod irc_client;
pub mod ircd;
pub mod oscar;
pub mod prometheus;
pub mod proxy;
pub mod rss;
pub mod streamer;
