#!/usr/bin/env python3
"""Extracts the FLAP frames of ../shared/vectors/oscar-aim-signon-im.pcapng into
tests/vectors/oscar-signon-im.txt, one frame a line: `<connection> <C|S> <hex>`.

The capture is a real libpurple client signing on twice (bobaim, aliceaim) to a real OSCAR
server and alice sending bob an IM. tshark reassembles nothing here; the TCP payloads are
concatenated per stream and direction (loopback, in order) and split on FLAP headers.
Run: python3 scripts/oscar-vectors.py [pcapng] > tests/vectors/oscar-signon-im.txt
"""
import struct, subprocess, sys

PORTS = {5190: "auth", 5191: "bos", 5193: "chatnav", 5194: "alert"}
pcap = sys.argv[1] if len(sys.argv) > 1 else "../shared/vectors/oscar-aim-signon-im.pcapng"
out = subprocess.run(
    ["tshark", "-r", pcap, "-T", "fields", "-e", "tcp.stream", "-e", "tcp.srcport",
     "-e", "tcp.dstport", "-e", "tcp.payload"],
    check=True, capture_output=True, text=True).stdout
streams = {}
for line in out.splitlines():
    s, sp, dp, payload = (line.split("\t") + [""] * 4)[:4]
    if not payload:
        continue
    sp, dp = int(sp), int(dp)
    server = sp if sp in PORTS else dp
    st = streams.setdefault(int(s), {"port": server, "C": b"", "S": b""})
    st["S" if sp == server else "C"] += bytes.fromhex(payload.replace(":", ""))
users = {}
print("# FLAP frames of oscar-aim-signon-im.pcapng (scripts/oscar-vectors.py): connection dir hex")
for s, st in sorted(streams.items()):
    if st["port"] == 5190:
        # The login's 17,06 names the user: TLV 1 right after the 10-byte SNAC header.
        c = st["C"]
        i = c.index(b"\x00\x17\x00\x06")
        n = struct.unpack(">H", c[i + 12:i + 14])[0]
        user = c[i + 14:i + 14 + n].decode()
        users[s] = user
    else:
        user = users[max(k for k in users if k < s)]
    name = f"{user}-{PORTS[st['port']]}"
    frames = []
    for d in "CS":
        b, i = st[d], 0
        while i + 6 <= len(b):
            assert b[i] == 0x2A, (name, d, i)
            n = struct.unpack(">H", b[i + 4:i + 6])[0]
            frames.append((d, b[i:i + 6 + n]))
            i += 6 + n
        assert i == len(b), (name, d, "leftover")
    for d, f in frames:
        print(name, d, f.hex())
