#!/usr/bin/env bash
# Watch a live IRC session move between servers without the client noticing.
#
# Starts two real ngircd servers linked into one network (A and B), handover in front of
# them, and two real IRC clients (Python `irc`): alice connects through handover (so she
# lands on A), bob connects straight to B. They chat in three channels and privately. Halfway
# through, the operator drains A with `handover drain a --wait`. At the end each client reports
# what it saw: alice stayed connected, saw one welcome, and got every one of bob's messages
# exactly once and in order, and bob got all of hers.
#
# Everything listens on 127.0.0.1 on free ports and is stopped (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing ngircd and the Python irc library if missing"
bash scripts/install-test-deps.sh
say "building handover"
cargo build --quiet
HANDOVER=target/debug/handover
PY=venv/bin/python

WORK=$(mktemp -d /tmp/handover-demo.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT_A=$(free_port); PORT_B=$(free_port); PORT_H=$(free_port); PORT_ADMIN=$(free_port)

ngircd_conf() { # name port peer-name peer-port passive
    cat <<EOF
[Global]
	Name = $1.irc.test
	Info = handover demo server $1
	Listen = 127.0.0.1
	Ports = $2
	MotdPhrase = hello from $1
	PidFile = $WORK/ngircd-$1.pid
	ServerUID = 0
	ServerGID = 0
[Limits]
	MaxConnections = 0
	MaxConnectionsIP = 0
	MaxJoins = 0
	MaxPenaltyTime = 0
	ConnectRetry = 1
	PingTimeout = 120
	MaxNickLength = 30
[Options]
	DNS = no
	Ident = no
	PAM = no
	RequireAuthPing = no
[Server]
	Name = $3.irc.test
	Host = 127.0.0.1
	Port = $4
	MyPassword = link-$1
	PeerPassword = link-$3
	Passive = $5
EOF
}

say "starting two linked ngircd servers: a on :$PORT_A, b on :$PORT_B"
ngircd_conf a "$PORT_A" b "$PORT_B" no > "$WORK/a.conf"
ngircd_conf b "$PORT_B" a "$PORT_A" yes > "$WORK/b.conf"
ngircd -n -f "$WORK/a.conf" > "$WORK/a.log" 2>&1 & PIDS+=($!)
ngircd -n -f "$WORK/b.conf" > "$WORK/b.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do grep -q "Synchronization with \"b.irc.test\" done\|Server \"b.irc.test\" registered" "$WORK/a.log" && break; sleep 0.1; done

say "starting handover on :$PORT_H in front of both (admin API on :$PORT_ADMIN)"
"$HANDOVER" serve --protocol irc --listen "127.0.0.1:$PORT_H" \
    --backend "a=127.0.0.1:$PORT_A" --backend "b=127.0.0.1:$PORT_B" \
    --admin "127.0.0.1:$PORT_ADMIN" > "$WORK/handover.log" 2>&1 & PIDS+=($!)
ADMIN="http://127.0.0.1:$PORT_ADMIN"
for _ in $(seq 50); do "$HANDOVER" status --admin "$ADMIN" >/dev/null 2>&1 && break; sleep 0.1; done
# New sessions go to the least-loaded backend: keep b out while alice connects, so she is on a.
"$HANDOVER" drain b --admin "$ADMIN" >/dev/null

say "alice connects through handover, bob straight to server b; they chat at 40 msgs/s each"
CHAT=(--count 400 --rate 40 --channels '#one,#two secretkey,#three' --start-file "$WORK/go" --duration-limit 90)
"$PY" tests/clients/irc_chat.py --port "$PORT_H" --nick alice --peer bob "${CHAT[@]}" \
    --ready-file "$WORK/alice.ready" --out "$WORK/alice.json" > "$WORK/alice.log" 2>&1 & ALICE=$!; PIDS+=($ALICE)
for _ in $(seq 100); do [ -s "$WORK/alice.json" ] || "$HANDOVER" status --admin "$ADMIN" 2>/dev/null | grep -q alice && break; sleep 0.1; done
"$HANDOVER" undrain b --admin "$ADMIN" >/dev/null
"$PY" tests/clients/irc_chat.py --port "$PORT_B" --nick bob --peer alice "${CHAT[@]}" \
    --ready-file "$WORK/bob.ready" --out "$WORK/bob.json" > "$WORK/bob.log" 2>&1 & BOB=$!; PIDS+=($BOB)
for _ in $(seq 300); do [ -e "$WORK/alice.ready" ] && [ -e "$WORK/bob.ready" ] && break; sleep 0.1; done
"$HANDOVER" status --admin "$ADMIN"
touch "$WORK/go"
sleep 4

say "draining backend a while they talk: handover drain a --wait"
time "$HANDOVER" drain a --wait --admin "$ADMIN"
"$HANDOVER" status --admin "$ADMIN"
echo
grep '"migration"\|migration ' "$WORK/handover.log" | tail -n 3 || true

say "waiting for the conversation to finish"
wait "$ALICE" || true
wait "$BOB" || true

say "what the clients saw"
"$PY" - "$WORK/alice.json" "$WORK/bob.json" <<'EOF'
import json, sys
ok = True
for path in sys.argv[1:]:
    r = json.load(open(path))
    c = r["counts"]
    welcomes = c.get("001", 0)
    motd = c.get("375", 0)
    own_joins = c.get("JOIN_SELF", 0)
    got = r["received_total"]
    print(f'{r["nick"]:6} disconnected={r["disconnected"]!s:5} welcomes(001)={welcomes} motds={motd} '
          f'own JOINs={own_joins} got {got}/{r["expect"]} of the peer\'s messages, '
          f'missing={len(r["missing"]) if isinstance(r["missing"], list) else r["missing"]} '
          f'duplicates={len(r["duplicates"]) if isinstance(r["duplicates"], list) else r["duplicates"]} '
          f'out of order={r["out_of_order_targets"]} nick now={r["final_nick"]}')
    ok &= not r["disconnected"] and welcomes == 1 and r["complete"]
print("\nNothing happened, as far as the clients can tell." if ok else "\nSomething was visible: see above.")
sys.exit(0 if ok else 1)
EOF
