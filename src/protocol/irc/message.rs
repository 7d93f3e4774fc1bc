//! The IRC line codec and a light, borrowing view of one message.
//!
//! A frame is one whole line *including* its terminator (`\n` or `\r\n`), exactly as it was
//! received, so that `Verdict::Forward` is byte-exact. Limits follow the IRCv3 message-tags
//! spec (as ergo enforces them): the tag section, `@` and the space after it included, is at
//! most 8191 bytes; the rest of the line is at most 512 bytes counting a CRLF terminator.
//!
//! [`Message`] parses over bytes, not `str`: IRC text is not always UTF-8, and rewrites (the
//! temporary nick) must splice the original bytes back together untouched.

use bytes::{Bytes, BytesMut};

use crate::protocol::FrameError;

/// Most bytes of the tag section, the leading `@` and the space after it included.
pub const MAX_TAGS: usize = 8191;
/// Most bytes of the rest of the line, counting a CRLF terminator.
pub const MAX_LINE: usize = 512;
/// Most bytes a buffer may hold without a line terminator.
pub const MAX_BUFFERED: usize = MAX_TAGS + MAX_LINE;

/// IRC allows at most 15 parameters.
const MAX_PARAMS: usize = 15;

/// Splits one line off the front of `buf`, or says that more bytes are needed.
pub fn decode_line(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    let window = &buf[..buf.len().min(MAX_BUFFERED)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_BUFFERED {
            return Err(FrameError(format!(
                "irc: no line terminator within {MAX_BUFFERED} bytes"
            )));
        }
        return Ok(None);
    };
    check_line(&buf[..=newline])?;
    Ok(Some(buf.split_to(newline + 1).freeze()))
}

/// Enforces the limits on one whole line (terminator included).
fn check_line(line: &[u8]) -> Result<(), FrameError> {
    if line.contains(&0) {
        return Err(FrameError("irc: NUL byte in line".into()));
    }
    let body = strip_terminator(line);
    let (tags, rest) = split_tags(body);
    let tag_len = tags.map_or(0, |t| t.len() + 2); // '@' and the space
    if tag_len > MAX_TAGS {
        return Err(FrameError(format!(
            "irc: tags of {tag_len} bytes exceed {MAX_TAGS}"
        )));
    }
    let line_len = rest.len() + 2; // counted as if terminated by CRLF
    if line_len > MAX_LINE {
        return Err(FrameError(format!(
            "irc: line of {line_len} bytes exceeds {MAX_LINE}"
        )));
    }
    Ok(())
}

/// The line without its `\n` or `\r\n`.
pub fn strip_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `@tags rest` into the tags (without `@`) and the rest; spaces after the tags go.
pub fn split_tags(line: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let Some(after_at) = line.strip_prefix(b"@") else {
        return (None, line);
    };
    match after_at.iter().position(|&b| b == b' ') {
        Some(space) => (Some(&after_at[..space]), trim_spaces(&after_at[space..])),
        None => (Some(after_at), &[]),
    }
}

/// The line without tags and terminator: the dedupe key, since tags such as `time` and
/// `msgid` differ between two servers relaying the same message.
pub fn untagged(frame: &[u8]) -> &[u8] {
    split_tags(strip_terminator(frame)).1
}

fn trim_spaces(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[start..]
}

/// A parsed view of one line; every slice points into the frame it was parsed from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub prefix: Option<&'a [u8]>,
    pub command: &'a [u8],
    params: [&'a [u8]; MAX_PARAMS],
    count: usize,
}

impl<'a> Message<'a> {
    /// Parses a frame (tags and terminator allowed); `None` for an empty line.
    pub fn parse(frame: &'a [u8]) -> Option<Message<'a>> {
        let mut rest = untagged(frame);
        let mut prefix = None;
        if let Some(p) = rest.strip_prefix(b":") {
            let (word, tail) = next_word(p);
            prefix = Some(word);
            rest = tail;
        }
        let (command, mut rest) = next_word(rest);
        if command.is_empty() {
            return None;
        }
        let mut msg = Message {
            prefix,
            command,
            params: [&[]; MAX_PARAMS],
            count: 0,
        };
        while !rest.is_empty() && msg.count < MAX_PARAMS {
            if let Some(trailing) = rest.strip_prefix(b":") {
                msg.push(trailing);
                break;
            }
            if msg.count == MAX_PARAMS - 1 {
                msg.push(rest);
                break;
            }
            let (word, tail) = next_word(rest);
            msg.push(word);
            rest = tail;
        }
        Some(msg)
    }

    fn push(&mut self, param: &'a [u8]) {
        self.params[self.count] = param;
        self.count += 1;
    }

    pub fn params(&self) -> &[&'a [u8]] {
        &self.params[..self.count]
    }

    pub fn param(&self, i: usize) -> Option<&'a [u8]> {
        self.params().get(i).copied()
    }

    /// The last parameter, usually the trailing text.
    pub fn last(&self) -> Option<&'a [u8]> {
        self.params().last().copied()
    }

    /// True when the command is `name` (ASCII case-insensitive) or the numeric `name`.
    pub fn is(&self, name: &str) -> bool {
        self.command.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The command in upper case, in `buf` (no allocation); empty when longer than `buf`.
    pub fn upper_command<'b>(&self, buf: &'b mut [u8; 16]) -> &'b [u8] {
        let Some(out) = buf.get_mut(..self.command.len()) else {
            return &[];
        };
        out.copy_from_slice(self.command);
        out.make_ascii_uppercase();
        out
    }

    /// The nick of a `nick!user@host` prefix (or the whole prefix: a server name).
    pub fn source_nick(&self) -> Option<&'a [u8]> {
        let p = self.prefix?;
        let end = p.iter().position(|&b| b == b'!' || b == b'@');
        Some(&p[..end.unwrap_or(p.len())])
    }

    /// The `user@host` part of a `nick!user@host` prefix.
    pub fn source_userhost(&self) -> Option<&'a [u8]> {
        let p = self.prefix?;
        let bang = p.iter().position(|&b| b == b'!')?;
        Some(&p[bang + 1..])
    }

    /// True when the prefix names a user (`nick!user@host`), not a server.
    pub fn from_user(&self) -> bool {
        self.prefix.is_some_and(|p| p.contains(&b'!'))
    }
}

fn next_word(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b' ') {
        Some(space) => (&s[..space], trim_spaces(&s[space..])),
        None => (s, &[]),
    }
}

/// Where `part` (a slice of `whole`) starts inside `whole`.
pub fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    let offset = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    debug_assert!(
        offset + part.len() <= whole.len(),
        "part is not inside whole"
    );
    offset
}

/// Replaces byte ranges (sorted, not overlapping) of `frame` with `with`.
pub fn splice(frame: &[u8], ranges: &[(usize, usize)], with: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.len() + ranges.len() * with.len());
    let mut at = 0;
    for &(start, len) in ranges {
        out.extend_from_slice(&frame[at..start]);
        out.extend_from_slice(with);
        at = start + len;
    }
    out.extend_from_slice(&frame[at..]);
    out.freeze()
}

/// RFC 1459 case folding, the default `CASEMAPPING` of ngircd and inspircd; a superset of
/// `ascii` for every nick that is not distinguished only by `[]\~` versus `{}|^`.
pub fn fold(b: u8) -> u8 {
    match b {
        b'A'..=b'Z' => b + 32,
        b'[' => b'{',
        b']' => b'}',
        b'\\' => b'|',
        b'~' => b'^',
        _ => b,
    }
}

/// Nick or channel equality under RFC 1459 case folding.
pub fn irc_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// True for a channel name (`#`, `&`, `+` or `!` first).
pub fn is_channel(name: &[u8]) -> bool {
    matches!(name.first(), Some(b'#' | b'&' | b'+' | b'!'))
}

/// Text of a parameter for storing in the snapshot.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One outgoing line: the parts joined by spaces, CRLF appended.
pub fn line(parts: &[&str]) -> Bytes {
    let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b" ");
        }
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<Bytes>, BytesMut) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = decode_line(&mut buf).unwrap() {
            out.push(frame);
        }
        (out, buf)
    }

    #[test]
    fn crlf_and_lf_lines_are_split_with_their_terminator() {
        let (frames, rest) = decode_all(b"PING :a\r\nPING :b\nPRIV");
        assert_eq!(frames, vec![&b"PING :a\r\n"[..], &b"PING :b\n"[..]]);
        assert_eq!(&rest[..], b"PRIV", "the partial line stays in the buffer");
    }

    #[test]
    fn a_partial_line_completes_when_the_rest_arrives() {
        let mut buf = BytesMut::from(&b"PRIVMSG #a :hel"[..]);
        assert_eq!(decode_line(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lo\r\n");
        assert_eq!(
            decode_line(&mut buf).unwrap().unwrap(),
            &b"PRIVMSG #a :hello\r\n"[..]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_line_of_exactly_512_bytes_passes_and_513_fails() {
        let ok = format!("PRIVMSG #a :{}\r\n", "x".repeat(512 - 14));
        assert_eq!(ok.len(), 512);
        let (frames, _) = decode_all(ok.as_bytes());
        assert_eq!(frames.len(), 1);
        let bad = format!("PRIVMSG #a :{}\r\n", "x".repeat(513 - 14));
        let err = decode_line(&mut BytesMut::from(bad.as_bytes())).unwrap_err();
        assert!(err.0.contains("513"), "{err}");
    }

    #[test]
    fn an_lf_line_is_counted_as_if_it_had_a_crlf() {
        let bad = format!("PRIVMSG #a :{}\n", "x".repeat(512 - 14 + 1));
        assert_eq!(bad.len(), 512);
        assert!(decode_line(&mut BytesMut::from(bad.as_bytes())).is_err());
    }

    #[test]
    fn tags_do_not_count_against_the_512_bytes() {
        let tags = format!("@{} ", "a".repeat(8189));
        assert_eq!(tags.len(), 8191);
        let text = format!("{tags}PRIVMSG #a :{}\r\n", "x".repeat(512 - 14));
        let (frames, _) = decode_all(text.as_bytes());
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn tags_over_8191_bytes_fail() {
        let text = format!("@{} PRIVMSG #a :x\r\n", "a".repeat(8190));
        let err = decode_line(&mut BytesMut::from(text.as_bytes())).unwrap_err();
        assert!(err.0.contains("tags"), "{err}");
    }

    #[test]
    fn a_nul_byte_fails() {
        let err = decode_line(&mut BytesMut::from(&b"PRIVMSG #a :x\0y\r\n"[..])).unwrap_err();
        assert!(err.0.contains("NUL"), "{err}");
    }

    #[test]
    fn a_buffer_without_newline_is_bounded() {
        let mut buf = BytesMut::from(&vec![b'x'; MAX_BUFFERED - 1][..]);
        assert_eq!(decode_line(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"x");
        assert!(decode_line(&mut buf).is_err());
    }

    #[test]
    fn a_newline_beyond_the_window_still_fails() {
        let mut input = vec![b'x'; MAX_BUFFERED + 10];
        input.extend_from_slice(b"\r\n");
        assert!(decode_line(&mut BytesMut::from(&input[..])).is_err());
    }

    #[test]
    fn parse_full_message() {
        let m = Message::parse(
            b"@time=2024-01-01T00:00:00Z :bob!~bob@host PRIVMSG #chan :hello there\r\n",
        )
        .unwrap();
        assert_eq!(m.prefix, Some(&b"bob!~bob@host"[..]));
        assert!(m.is("privmsg"));
        assert_eq!(m.upper_command(&mut [0; 16]), b"PRIVMSG");
        let long = Message::parse(b"ABCDEFGHIJKLMNOPQ x\r\n").unwrap();
        assert_eq!(long.upper_command(&mut [0; 16]), b"");
        assert_eq!(m.params(), &[&b"#chan"[..], &b"hello there"[..]]);
        assert_eq!(m.source_nick(), Some(&b"bob"[..]));
        assert_eq!(m.source_userhost(), Some(&b"~bob@host"[..]));
        assert!(m.from_user());
    }

    #[test]
    fn parse_without_trailing_and_with_extra_spaces() {
        let m = Message::parse(b":a.irc.test  MODE  alice  +i\n").unwrap();
        assert_eq!(m.source_nick(), Some(&b"a.irc.test"[..]));
        assert!(!m.from_user());
        assert_eq!(m.params(), &[&b"alice"[..], &b"+i"[..]]);
        assert!(Message::parse(b"\r\n").is_none());
        assert!(Message::parse(b"@a=b \r\n").is_none());
    }

    #[test]
    fn fifteenth_param_takes_the_rest() {
        let m = Message::parse(b"X 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\r\n").unwrap();
        assert_eq!(m.params().len(), 15);
        assert_eq!(m.last(), Some(&b"15 16"[..]));
    }

    #[test]
    fn splice_replaces_ranges() {
        let frame = b":tmp!u@h MODE tmp :+i\r\n";
        let m = Message::parse(frame).unwrap();
        let nick = m.source_nick().unwrap();
        let target = m.param(0).unwrap();
        let ranges = [
            (offset_in(frame, nick), nick.len()),
            (offset_in(frame, target), target.len()),
        ];
        assert_eq!(
            splice(frame, &ranges, b"alice"),
            &b":alice!u@h MODE alice :+i\r\n"[..]
        );
    }

    #[test]
    fn rfc1459_folding() {
        assert!(irc_eq(b"Alice[m]", b"alice{M}"));
        assert!(!irc_eq(b"alice", b"alice_"));
        assert!(is_channel(b"#a") && is_channel(b"&a") && !is_channel(b"alice"));
    }

    #[test]
    fn untagged_is_the_dedupe_key() {
        assert_eq!(
            untagged(b"@msgid=1;time=x :b!u@h PRIVMSG #a :hi\r\n"),
            &b":b!u@h PRIVMSG #a :hi"[..]
        );
        assert_eq!(
            untagged(b":b!u@h PRIVMSG #a :hi\n"),
            untagged(b":b!u@h PRIVMSG #a :hi\r\n")
        );
    }
}
