//! handover: a front proxy for long-lived TCP and TLS sessions that moves live sessions
//! between backends without the client noticing.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod net;
pub mod protocol;
pub mod telemetry;
