#!/usr/bin/env python3
"""Real IRC client (jaraco `irc` library, irc.client.Reactor) that exchanges
numbered messages with a peer, to prove exactly-once, in-order delivery while a
proxy migrates the session underneath.

Lifecycle:
  1. connect (optional PASS), register as --nick, wait for the end of the
     welcome burst (376/422), then optional MODE <nick> --umode and AWAY --away;
  2. join --channels ('#a,#b key,#c'); for a keyed channel, whoever holds ops
     there (the first joiner) sets MODE +k <key>;
  3. wait until the --peer is seen in every channel (NAMES/JOIN), then write
     --ready-file (if given) and print "READY";
  4. wait for --start-file to exist (if given), then send --count messages
     "<nick>:<n>" (n = 1..count) at --rate per second, message n going to
     targets[(n-1) % len(targets)], targets = the channels in --channels order,
     then the peer privately (if --peer);
  5. keep receiving until --expect (default --count) peer messages have arrived
     and all own messages are sent, then --linger seconds more (to catch late
     duplicates), then wait for --stop-file (if given), then QUIT.
  --duration-limit bounds the whole run (from process start).

Output (--out, written atomically as JSON, also on errors):
  nick, final_nick, server_name (prefix of 001), peer,
  registered, ready, started, timed_out, complete (all expected peer messages
  received, none duplicated, every target in order, no disconnect),
  disconnected (the connection closed other than by our own QUIT),
  disconnect_reason, error_lines (ERROR texts from the server, except its
  reply to our own QUIT, which is quit_reply), exceptions,
  sent (total), sent_per_target {target: count},
  expect, received {target: [n, ...] in arrival order}, received_total,
  missing [n never received], duplicates [n received more than once],
  out_of_order_targets [targets whose numbers did not strictly increase],
  counts {command/numeric: n} for the whole session, and
  counts_after_welcome {...} for lines after the first 376/422
  (welcome_end_missing: none came within 10 s of 001, counted from then);
  besides raw commands ("001", "PRIVMSG", "PING", ...) the counts have
  "JOIN_SELF"/"PART_SELF"/"NICK_SELF"/"QUIT_SELF" for our own JOIN/PART/NICK/QUIT,
  errors {numeric: n} for every 4xx/5xx numeric (e.g. "401" No such nick),
  error_samples (first lines of those), other_messages (first PRIVMSG/NOTICE
  texts not from the peer's numbered stream), peer_present {channel: bool},
  timing {connected, welcome, welcome_end, ready, start, sending_done,
  receiving_done, end}: seconds since process start (null if not reached),
  exit_code.
Targets: channels are keyed in lower case as given in --channels; private
messages (to us) are keyed "private".

Exit code: 0 if it registered and ran to the end without a disconnect or an
exception (message loss is reported in the JSON, not the exit code), 1
otherwise, 2 for bad arguments.
"""

import argparse
import json
import os
import re
import sys
import time
import traceback

import ssl

import irc.client
import irc.connection
import jaraco.stream.buffer

START = time.monotonic()
PRIVATE = "private"
MAX_SAMPLES = 20
WELCOME_END_FALLBACK = 10.0  # seconds after 001 to stop waiting for 376/422


def now():
    return time.monotonic() - START


def parse_channels(spec):
    """'#a,#b key,#c' -> [('#a', None), ('#b', 'key'), ('#c', None)]"""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(None, 1)
        out.append((parts[0], parts[1].strip() if len(parts) > 1 else None))
    return out


def parse_line(raw):
    """Returns (prefix_nick or None, COMMAND, params list) of a raw IRC line."""
    line = raw.rstrip("\r\n")
    prefix = None
    if line.startswith("@"):  # message tags
        line = line.split(" ", 1)[1] if " " in line else ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    trailing = None
    if " :" in line:
        line, trailing = line.split(" :", 1)
    params = line.split()
    command = params.pop(0).upper() if params else ""
    if trailing is not None:
        params.append(trailing)
    nick = prefix.split("!", 1)[0] if prefix else None
    return nick, command, params


class Chat:
    def __init__(self, args):
        self.args = args
        self.channels = parse_channels(args.channels or "")
        self.targets = [name for name, _ in self.channels] + ([args.peer] if args.peer else [])
        self.expect = args.expect if args.expect is not None else (args.count if args.peer else 0)
        self.peer_re = re.compile(r"^%s:(\d+)(?:\s|$)" % re.escape(args.peer)) if args.peer else None
        self.conn = None
        self.r = {
            "nick": args.nick,
            "final_nick": None,
            "server_name": None,
            "peer": args.peer,
            "registered": False,
            "ready": False,
            "started": False,
            "timed_out": False,
            "complete": False,
            "disconnected": False,
            "disconnect_reason": None,
            "error_lines": [],
            "quit_reply": None,
            "welcome_end_missing": False,
            "exceptions": [],
            "sent": 0,
            "sent_per_target": {t.lower() if t != args.peer else PRIVATE: 0 for t in self.targets},
            "expect": self.expect,
            "received": {name.lower(): [] for name, _ in self.channels},
            "received_total": 0,
            "missing": [],
            "duplicates": [],
            "out_of_order_targets": [],
            "counts": {},
            "counts_after_welcome": {},
            "errors": {},
            "error_samples": [],
            "other_messages": [],
            "peer_present": {name.lower(): False for name, _ in self.channels},
            "timing": dict.fromkeys(
                ["connected", "welcome", "welcome_end", "ready", "start", "sending_done", "receiving_done", "end"]
            ),
            "exit_code": None,
        }
        if args.peer:
            self.r["received"][PRIVATE] = []
        self.welcome_done = False
        self.joined = set()  # lower-case channels whose own JOIN we saw
        self.names_done = set()  # lower-case channels whose 366 we saw
        self.key_set = set()
        self.quitting = False
        self.closed = False
        self.next_n = 1
        self.t_start = None
        self.done_at = None

    # ----- helpers -------------------------------------------------------
    def my_nick(self):
        return self.conn.get_nickname() if self.conn else self.args.nick

    def is_me(self, nick):
        return nick is not None and nick.lower() == self.my_nick().lower()

    def is_peer(self, nick):
        return nick is not None and self.args.peer is not None and nick.lower() == self.args.peer.lower()

    def bump(self, key):
        self.r["counts"][key] = self.r["counts"].get(key, 0) + 1
        if self.welcome_done:
            self.r["counts_after_welcome"][key] = self.r["counts_after_welcome"].get(key, 0) + 1

    def key_of(self, channel):
        return channel.lower()

    # ----- event handlers ------------------------------------------------
    def on_raw(self, conn, event):
        raw = event.arguments[0]
        nick, command, params = parse_line(raw)
        self.bump(command)
        if command in ("JOIN", "PART", "NICK", "QUIT") and self.is_me(nick):
            self.bump(command + "_SELF")
        if command.isdigit() and 400 <= int(command) <= 599:
            self.r["errors"][command] = self.r["errors"].get(command, 0) + 1
            if len(self.r["error_samples"]) < MAX_SAMPLES:
                self.r["error_samples"].append(raw)
        if command == "ERROR":
            # The server's ERROR reply to our own QUIT is normal; report it apart.
            text = params[-1] if params else raw
            if self.quitting:
                self.r["quit_reply"] = text
            else:
                self.r["error_lines"].append(text)
        if command == "001":
            self.r["registered"] = True
            self.r["server_name"] = self.r["server_name"] or (raw[1:].split(" ", 1)[0] if raw.startswith(":") else None)
            self.r["timing"]["welcome"] = self.r["timing"]["welcome"] or now()
        # The welcome burst ends with the MOTD (or its absence); count what follows.
        if command in ("376", "422") and not self.welcome_done:
            self.end_welcome()

    def end_welcome(self):
        self.welcome_done = True
        self.r["timing"]["welcome_end"] = now()
        self.after_welcome()

    def after_welcome(self):
        c = self.conn
        if self.args.umode:
            c.mode(self.my_nick(), self.args.umode)
        if self.args.away:
            c.send_raw("AWAY :%s" % self.args.away)
        for name, key in self.channels:
            c.join(name, key or "")

    def on_join(self, conn, event):
        nick = event.source.nick
        chan = self.key_of(event.target)
        if self.is_me(nick):
            self.joined.add(chan)
        elif self.is_peer(nick) and chan in self.r["peer_present"]:
            self.r["peer_present"][chan] = True

    def on_namreply(self, conn, event):
        # args: [type, channel, "nick1 @nick2 ..."]
        chan = self.key_of(event.arguments[1])
        for entry in event.arguments[2].split():
            name = entry.lstrip("~&@%+")
            if self.is_peer(name) and chan in self.r["peer_present"]:
                self.r["peer_present"][chan] = True
            if self.is_me(name) and entry[0] in "~&@%":
                self.maybe_set_key(chan)

    def on_endofnames(self, conn, event):
        self.names_done.add(self.key_of(event.arguments[0]))

    def maybe_set_key(self, chan):
        for name, key in self.channels:
            if key and name.lower() == chan and chan not in self.key_set:
                self.key_set.add(chan)
                self.conn.mode(name, "+k " + key)

    def on_part(self, conn, event):
        chan = self.key_of(event.target)
        if self.is_peer(event.source.nick) and chan in self.r["peer_present"]:
            self.r["peer_present"][chan] = False

    def on_kick(self, conn, event):
        chan = self.key_of(event.target)
        if event.arguments and self.is_peer(event.arguments[0]) and chan in self.r["peer_present"]:
            self.r["peer_present"][chan] = False

    def on_quit(self, conn, event):
        if self.is_peer(event.source.nick):
            for chan in self.r["peer_present"]:
                self.r["peer_present"][chan] = False

    def on_message(self, conn, event):
        text = event.arguments[0] if event.arguments else ""
        nick = event.source.nick if event.source else None
        private = not irc.client.is_channel(event.target)
        target = PRIVATE if private else self.key_of(event.target)
        m = self.peer_re.match(text) if (self.peer_re and self.is_peer(nick)) else None
        if m and target in self.r["received"]:
            self.r["received"][target].append(int(m.group(1)))
            self.r["received_total"] += 1
        elif len(self.r["other_messages"]) < MAX_SAMPLES:
            self.r["other_messages"].append({"from": nick, "target": event.target, "text": text, "type": event.type})

    def on_disconnect(self, conn, event):
        self.closed = True
        if not self.quitting:
            self.r["disconnected"] = True
            self.r["disconnect_reason"] = event.arguments[0] if event.arguments else "disconnected"

    # ----- main loop -----------------------------------------------------
    def ready_now(self):
        wanted = {name.lower() for name, _ in self.channels}
        if not (self.welcome_done and wanted <= self.joined and wanted <= self.names_done):
            return False
        if self.args.peer and not self.args.no_wait_peer:
            return all(self.r["peer_present"].values())
        return True

    def send_due(self):
        if self.t_start is None:
            return
        elapsed = time.monotonic() - self.t_start
        while self.next_n <= self.args.count and (self.args.rate <= 0 or elapsed * self.args.rate >= self.next_n - 1):
            target = self.targets[(self.next_n - 1) % len(self.targets)]
            self.conn.privmsg(target, "%s:%d%s" % (self.args.nick, self.next_n, self.args.pad))
            key = PRIVATE if target == self.args.peer else target.lower()
            self.r["sent_per_target"][key] += 1
            self.r["sent"] += 1
            self.next_n += 1
        if self.next_n > self.args.count and self.r["timing"]["sending_done"] is None:
            self.r["timing"]["sending_done"] = now()

    def run(self):
        a = self.args
        irc.client.ServerConnection.buffer_class = jaraco.stream.buffer.LenientDecodingLineBuffer
        reactor = irc.client.Reactor()
        reactor.add_global_handler("all_raw_messages", self.on_raw, -10)
        reactor.add_global_handler("join", self.on_join)
        reactor.add_global_handler("namreply", self.on_namreply)
        reactor.add_global_handler("endofnames", self.on_endofnames)
        reactor.add_global_handler("part", self.on_part)
        reactor.add_global_handler("kick", self.on_kick)
        reactor.add_global_handler("quit", self.on_quit)
        for ev in ("pubmsg", "privmsg", "pubnotice", "privnotice", "action"):
            reactor.add_global_handler(ev, self.on_message)
        reactor.add_global_handler("disconnect", self.on_disconnect)
        factory = irc.connection.Factory()
        if a.tls:
            # Test certificates are self-signed: encrypt, but do not verify.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            factory = irc.connection.Factory(wrapper=lambda sock: ctx.wrap_socket(sock, server_hostname=a.host))
        self.conn = reactor.server().connect(
            a.host, a.port, a.nick, password=a.password, username=a.username or a.nick, ircname=a.realname,
            connect_factory=factory,
        )
        self.r["timing"]["connected"] = now()

        deadline = START + a.duration_limit
        if not self.targets:
            a.count = 0
        linger_until = None
        while not self.closed:
            t = time.monotonic()
            if t >= deadline:
                self.r["timed_out"] = True
                break
            welcome_at = self.r["timing"]["welcome"]
            if not self.welcome_done and welcome_at is not None and now() - welcome_at > WELCOME_END_FALLBACK:
                self.r["welcome_end_missing"] = True  # no 376/422 after 001: go on anyway
                self.end_welcome()
            if not self.r["ready"] and self.ready_now():
                self.r["ready"] = True
                self.r["timing"]["ready"] = now()
                if a.ready_file:
                    with open(a.ready_file + ".tmp", "w") as f:
                        f.write("ready\n")
                    os.replace(a.ready_file + ".tmp", a.ready_file)
                print("READY", a.nick, flush=True)
            if self.r["ready"] and self.t_start is None and (not a.start_file or os.path.exists(a.start_file)):
                self.t_start = time.monotonic()
                self.r["started"] = True
                self.r["timing"]["start"] = now()
            self.send_due()
            sending_done = self.t_start is not None and self.next_n > a.count
            if sending_done and self.r["received_total"] >= self.expect:
                if self.done_at is None:
                    self.done_at = t
                    self.r["timing"]["receiving_done"] = now()
                    linger_until = t + a.linger
                if t >= linger_until and (not a.stop_file or os.path.exists(a.stop_file)):
                    break
            # Short timeout while sending keeps the rate smooth; otherwise poll files.
            reactor.process_once(0.005 if (self.t_start is not None and not sending_done) else 0.05)

        if not self.closed:
            self.quitting = True
            try:
                self.conn.quit(a.quit_message)
            except irc.client.ServerNotConnectedError:
                pass
            end = time.monotonic() + 2.0
            while not self.closed and time.monotonic() < end:
                reactor.process_once(0.05)
            if not self.closed:
                self.conn.close()

    def finish(self):
        r = self.r
        r["final_nick"] = self.my_nick()
        seen = {}
        for target, nums in r["received"].items():
            for n in nums:
                seen[n] = seen.get(n, 0) + 1
            if any(b <= a for a, b in zip(nums, nums[1:])):
                r["out_of_order_targets"].append(target)
        r["missing"] = [n for n in range(1, self.expect + 1) if n not in seen]
        r["duplicates"] = sorted(n for n, c in seen.items() if c > 1)
        r["complete"] = (
            r["started"]
            and not r["missing"]
            and not r["duplicates"]
            and not r["out_of_order_targets"]
            and not r["disconnected"]
            and not r["exceptions"]
        )
        r["timing"]["end"] = now()
        ok = r["registered"] and not r["disconnected"] and not r["exceptions"]
        r["exit_code"] = 0 if ok else 1
        return r["exit_code"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--nick", required=True)
    p.add_argument("--username", help="USER name (default: the nick)")
    p.add_argument("--realname", default="handover irc_chat.py")
    p.add_argument("--password", help="connection password (PASS)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (certificate not verified)")
    p.add_argument("--channels", default="", help="'#a,#b key,#c'")
    p.add_argument("--peer", help="nick of the other client")
    p.add_argument("--count", type=int, default=0, help="messages to send")
    p.add_argument("--rate", type=float, default=50.0, help="messages per second (<=0: as fast as possible)")
    p.add_argument("--expect", type=int, help="peer messages to wait for (default: --count if --peer)")
    p.add_argument("--pad", default="", help="text appended to every message after the number (start it with a space)")
    p.add_argument("--start-file", help="send only once this file exists")
    p.add_argument("--ready-file", help="written once joined and the peer is in every channel")
    p.add_argument("--stop-file", help="after the exchange, stay connected until this file exists")
    p.add_argument("--no-wait-peer", action="store_true", help="don't wait for the peer in the channels")
    p.add_argument("--away", help="set AWAY with this text after the welcome burst")
    p.add_argument("--umode", help="user mode change after the welcome burst, e.g. +i")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to keep receiving after completion")
    p.add_argument("--duration-limit", type=float, default=60.0, help="hard limit for the whole run, seconds")
    p.add_argument("--quit-message", default="irc_chat done")
    p.add_argument("--out", required=True, help="JSON result path")
    args = p.parse_args()
    if args.pad and not args.pad.startswith(" "):
        p.error("--pad must start with a space")

    chat = Chat(args)
    try:
        chat.run()
    except irc.client.ServerConnectionError as e:
        chat.r["disconnected"] = True
        chat.r["disconnect_reason"] = "connect failed: %s" % e
    except Exception:  # report, don't hide: the JSON is the test's evidence
        chat.r["exceptions"].append(traceback.format_exc())
    code = chat.finish()
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(chat.r, f, indent=1, sort_keys=True)
    os.replace(tmp, args.out)
    r = chat.r
    print(
        "irc_chat %s: exit %d registered=%s complete=%s sent=%d received=%d/%d missing=%d dup=%d disconnected=%s%s"
        % (args.nick, code, r["registered"], r["complete"], r["sent"], r["received_total"], chat.expect,
           len(r["missing"]), len(r["duplicates"]), r["disconnected"],
           (" (%s)" % r["disconnect_reason"]) if r["disconnect_reason"] else ""),
        file=sys.stderr,
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
