//! IRC numerics and the families the adapter branches on, in one place (as soju's `xirc`).

pub const RPL_WELCOME: &str = "001";
pub const RPL_ISUPPORT: &str = "005";
pub const RPL_BOUNCE: &str = "010";
pub const RPL_UNAWAY: &str = "305";
pub const RPL_NOWAWAY: &str = "306";
pub const RPL_ENDOFNAMES: &str = "366";
pub const ERR_ERRONEUSNICKNAME: &str = "432";
pub const ERR_PASSWDMISMATCH: &str = "464";
pub const ERR_YOUREBANNEDCREEP: &str = "465";
pub const RPL_SASLSUCCESS: &str = "903";

/// The nick is taken or held, or the server refuses the change for now: try another one.
pub const NICK_TAKEN: &[&str] = &[
    "433", // ERR_NICKNAMEINUSE
    "436", // ERR_NICKCOLLISION
    "437", // ERR_UNAVAILRESOURCE (nick delay)
    "438", // ERR_NICKTOOFAST (ngircd, inspircd)
];

/// Refusals of a JOIN; the channel is the second parameter.
pub const JOIN_ERRORS: &[&str] = &[
    "403", // ERR_NOSUCHCHANNEL
    "405", // ERR_TOOMANYCHANNELS
    "437", // ERR_UNAVAILRESOURCE (channel delay)
    "470", // ERR_LINKCHANNEL (forwarded elsewhere)
    "471", // ERR_CHANNELISFULL
    "473", // ERR_INVITEONLYCHAN
    "474", // ERR_BANNEDFROMCHAN
    "475", // ERR_BADCHANNELKEY
    "476", // ERR_BADCHANMASK
    "477", // ERR_NEEDREGGEDNICK
    "479", // ERR_BADCHANNAME (inspircd)
    "489", // ERR_SECUREONLYCHAN
    "520", // ERR_CANTJOINOPERSONLY (inspircd)
];

/// SASL refusals: fail, too long, aborted, already authenticated.
pub const SASL_ERRORS: &[&str] = &["902", "904", "905", "906", "907"];

/// User modes that only the server or services set (oper, away, TLS, registered): asking for
/// them is refused or ignored, so they are never replayed. A refusal of any other mode is
/// ignored too; it does not fail a migration.
pub const SERVER_USER_MODES: &str = "oOazZr";

/// Returns the entry of `list` equal to `command`, if any.
pub fn one_of(command: &[u8], list: &[&'static str]) -> Option<&'static str> {
    list.iter().copied().find(|n| n.as_bytes() == command)
}
