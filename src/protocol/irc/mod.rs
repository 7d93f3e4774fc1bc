//! IRC: lines, a snapshot learned from the server's confirmations, re-registration under a
//! temporary nick on linked networks, and a seamless cut.
//!
//! So far: the line codec and message view (`message`).

pub mod message;
