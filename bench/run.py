#!/usr/bin/env python3
"""handover's benchmark driver (run it through scripts/bench.sh).

Starts real haproxy, nginx (stream), socat and handover side by side on 127.0.0.1, drives
them with iperf3 and the native programs of examples/bench.rs, and writes results.json,
results.md and PNG plots (gnuplot) to --out. Python only orchestrates: nothing it does is in
a timed path. Every process it starts is stopped by PID; every load is bounded in count and
time. Ratios are computed between targets measured in the same run, interleaved round by
round, because this machine's clock and neighbours make absolute numbers drift.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCS = []  # every Popen we started, stopped in reverse order at exit
BASELINE = None  # --baseline-handover


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ----------------------------------------------------------------------------------------
# processes and /proc


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    """pid and all its descendants that are alive now."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kib(pid):
    """(sum of VmRSS, sum of Pss) over the process tree, KiB."""
    rss = pss = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


CLK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid):
    """CPU seconds (user+system) of the tree, including reaped children (socat's forks)."""
    total = 0
    for i, p in enumerate(tree(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is state (field 3); utime=14, stime=15, cutime=16, cstime=17
        total += int(fields[11]) + int(fields[12])
        if i == 0:
            total += int(fields[13]) + int(fields[14])
    return total / CLK


class Proc:
    def __init__(self, name, cmd, work, env=None, stdin=None, stdout=None):
        self.name = name
        self.logpath = os.path.join(work, f"{name}.log")
        self.logf = open(self.logpath, "ab")
        e = dict(os.environ)
        if env:
            e.update(env)
        self.p = subprocess.Popen(
            cmd,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self.logf,
            stderr=self.logf,
            env=e,
            cwd=work,
        )
        self.pid = self.p.pid
        PROCS.append(self)

    def stop(self):
        if self.p.poll() is None:
            # The tree first (socat's forks, nginx's workers), all by PID; then the root.
            for p in reversed(tree(self.pid)[1:]):
                try:
                    os.kill(p, signal.SIGTERM)
                except OSError:
                    pass
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                for p in reversed(tree(self.pid)):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                self.p.wait(5)
        self.logf.close()
        if self in PROCS:
            PROCS.remove(self)


def stop_all():
    for p in reversed(list(PROCS)):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            log("stopping", p.name, "failed:", e)


# ----------------------------------------------------------------------------------------
# proxies: each kind gets a set of routes (name, protocol, target port) -> listen port


class Proxy:
    def __init__(self, kind, proc, ports, admin=None):
        self.kind, self.proc, self.ports, self.admin = kind, proc, ports, admin

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        self.proc.stop()


def start_proxy(kind, routes, work, tag="", handover_extra="", wrap=(), binary=None,
                handover_listener=""):
    """routes: list of (name, protocol, target_port). Returns a Proxy once every port listens.
    `wrap` goes before the command (valgrind); `binary` replaces handover's (an A/B run);
    `handover_listener` adds keys to each handover listener table (e.g. "splice = false")."""
    ports = {name: free_port() for name, _, _ in routes}
    d = os.path.join(work, f"{kind}{tag}")
    os.makedirs(d, exist_ok=True)
    admin = None
    if kind == "handover":
        admin = free_port()
        text = f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n'
        for name, proto, target in routes:
            text += (
                f'[[listener]]\nname = "{name}"\nlisten = "127.0.0.1:{ports[name]}"\n'
                f'protocol = "{proto}"\nbackends = ["{name}-be"]\nmax_sessions = 9000\n'
                f'{handover_listener}\n'
                f'[[backend]]\nname = "{name}-be"\naddress = "127.0.0.1:{target}"\n\n'
            )
        text += handover_extra
        cfg = os.path.join(d, "handover.toml")
        open(cfg, "w").write(text)
        proc = Proc(
            f"handover{tag}",
            [*wrap, binary or HANDOVER, "serve", "--config", cfg],
            work,
            env={"RUST_LOG": "warn"},
        )
    elif kind == "haproxy":
        text = (
            "global\n    maxconn 9000\n"
            "defaults\n    mode tcp\n    maxconn 9000\n    timeout connect 5s\n"
            "    timeout client 1h\n    timeout server 1h\n"
        )
        for name, _, target in routes:
            text += (
                f"frontend f_{name}\n    bind 127.0.0.1:{ports[name]}\n    default_backend b_{name}\n"
                f"backend b_{name}\n    server s 127.0.0.1:{target}\n"
            )
        cfg = os.path.join(d, "haproxy.cfg")
        open(cfg, "w").write(text)
        proc = Proc(f"haproxy{tag}", [*wrap, "haproxy", "-db", "-f", cfg], work)
    elif kind == "nginx":
        text = (
            f"load_module {NGINX_STREAM};\nworker_processes auto;\nworker_rlimit_nofile 19500;\n"
            f"daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n"
            "events { worker_connections 19000; }\nstream {\n"
        )
        for name, _, target in routes:
            text += (
                f"    server {{ listen 127.0.0.1:{ports[name]}; proxy_pass 127.0.0.1:{target}; "
                "proxy_timeout 1h; }\n"
            )
        text += "}\n"
        cfg = os.path.join(d, "nginx.conf")
        open(cfg, "w").write(text)
        proc = Proc(f"nginx{tag}", ["nginx", "-c", cfg, "-p", d + "/"], work)
    elif kind == "socat":
        # socat serves one route per process; the first route's process is the one measured.
        assert len(routes) == 1
        name, _, target = routes[0]
        proc = Proc(
            f"socat{tag}",
            [
                "socat",
                f"TCP-LISTEN:{ports[name]},bind=127.0.0.1,fork,reuseaddr,backlog=4096",
                f"TCP:127.0.0.1:{target}",
            ],
            work,
        )
    else:
        raise ValueError(kind)
    for p in ports.values():
        wait_port(p, 120 if wrap else 10)  # under valgrind, start-up takes seconds
    if admin:
        wait_port(admin, 120 if wrap else 10)
    return Proxy(kind, proc, ports, admin)


def run_json(cmd, timeout):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {out.stderr.strip()[-500:]}")
    text = out.stdout.strip()
    try:
        return json.loads(text)  # iperf3 -J: one multi-line object
    except json.JSONDecodeError:
        return json.loads(text.splitlines()[-1])  # bench: one object per line, the last wins


def http(method, url, timeout=30):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------
# 1 + 6: throughput and CPU per GB


def bench_throughput(cfg, work, R):
    iport = free_port()
    Proc("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iport)], work)
    wait_port(iport)
    route = [("iperf", "raw", iport)]
    proxies = {k: start_proxy(k, route, work, "-tput") for k in ("handover", "haproxy", "nginx", "socat")}
    # A/B in the same rounds: handover with splice(2) (the default) and copying.
    proxies["handover (copy)"] = start_proxy("handover", route, work, "-tput-copy",
                                             handover_listener="splice = false\n")
    order = ["handover", "handover (copy)", "haproxy", "nginx", "socat"]
    proxies = {k: proxies[k] for k in order}
    targets = ["direct"] + list(proxies)
    res = {s: {t: [] for t in targets} for s in cfg["streams"]}
    for streams in cfg["streams"]:
        for rnd in range(cfg["rounds"]):
            for t in targets:
                port = iport if t == "direct" else proxies[t].ports["iperf"]
                pid = None if t == "direct" else proxies[t].pid
                c0 = cpu_secs(pid) if pid else 0
                r = run_json(
                    ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(cfg["secs"]),
                     "-P", str(streams), "-J"],
                    timeout=cfg["secs"] * 10 + 30,
                )
                c1 = cpu_secs(pid) if pid else 0
                s = r["end"]["sum_received"]
                gbps = s["bits_per_second"] / 1e9
                gb = s["bytes"] / 1e9
                res[streams][t].append({"gbps": gbps, "bytes": s["bytes"], "cpu_s": c1 - c0,
                                        "cpu_s_per_gb": (c1 - c0) / gb if pid else None})
                log(f"throughput P={streams} round {rnd + 1} {t}: {gbps:.2f} Gbit/s"
                    + (f", {(c1 - c0) / gb:.2f} CPU s/GB" if pid else ""))
                time.sleep(0.3)
    for p in proxies.values():
        p.stop()
    out = {}
    for streams, by in res.items():
        out[streams] = {}
        for t, runs in by.items():
            out[streams][t] = {
                "gbps": median([x["gbps"] for x in runs]),
                "runs_gbps": [round(x["gbps"], 3) for x in runs],
                "cpu_s_per_gb": median([x["cpu_s_per_gb"] for x in runs]) if t != "direct" else None,
            }
    return out


# ----------------------------------------------------------------------------------------
# 2: latency


def pin(pid, cpus):
    """Pins every thread of the process tree to `cpus` (taskset -a)."""
    for p in tree(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(p)], capture_output=True)


LAT_VARIANTS = {"unpinned": None, "one-cpu": "1"}


def bench_latency(cfg, work, R):
    eport = free_port()
    echo = Proc("echo-server", [BENCH, "echo-server", "--listen", f"127.0.0.1:{eport}"], work)
    wait_port(eport)
    proxies = {k: start_proxy(k, [("echo", "raw", eport)], work, "-lat")
               for k in ("handover", "haproxy", "nginx", "socat")}
    hirc = start_proxy("handover", [("echo", "irc", eport)], work, "-lat-irc")
    ports = {"direct": eport, "handover (raw)": proxies["handover"].ports["echo"],
             "handover (irc)": hirc.ports["echo"], "haproxy": proxies["haproxy"].ports["echo"],
             "nginx": proxies["nginx"].ports["echo"], "socat": proxies["socat"].ports["echo"]}
    pids = [echo.pid, hirc.pid] + [p.pid for p in proxies.values()]
    extra = []
    if BASELINE:
        # An A/B run: another handover binary (say, main's) beside this one, same config.
        base = start_proxy("handover", [("echo", "raw", eport)], work, "-lat-base", binary=BASELINE)
        ports["baseline handover (raw)"] = base.ports["echo"]
        pids.append(base.pid)
        extra.append(base)
    rounds = cfg.get("lat_rounds", cfg["rounds"])
    out = {}
    for variant, cpus in LAT_VARIANTS.items():
        # unpinned: wherever the scheduler puts things (cross-CPU wake-ups included);
        # one-cpu: client, echo server and proxy share CPU 1, so what is added is the
        # proxy's own work per message, without the VM's cross-CPU wake-up cost.
        for pid in pids:
            pin(pid, cpus or "0-%d" % (os.cpu_count() - 1))
        res = {t: [] for t in ports}
        for rnd in range(rounds):
            # Every other round in the reverse order, so no path always runs just after
            # another one (or first, on a machine still settling).
            order = list(ports.items()) if rnd % 2 == 0 else list(reversed(ports.items()))
            for t, port in order:
                last = rnd == rounds - 1
                samples = os.path.join(R, f"latency-{variant}-{slug(t)}.samples") if last else None
                cmd = ([] if cpus is None else ["taskset", "-c", cpus]) + [
                    BENCH, "latency", "--connect", f"127.0.0.1:{port}", "--count", str(cfg["count"]),
                    "--warmup", str(cfg["warmup"]), "--size", "100"]
                if samples:
                    cmd += ["--samples", samples]
                r = run_json(cmd, timeout=600)
                res[t].append(r)
                log(f"latency {variant} round {rnd + 1} {t}: p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us")
        out[variant] = {}
        added = {t: {q: [r[f"{q}_us"] - d[f"{q}_us"] for r, d in zip(runs, res["direct"])]
                     for q in ("p50", "p99")} for t, runs in res.items()}
        for t, runs in res.items():
            # Paired: this path's added latency over haproxy's in the same round, then the
            # median of those ratios (the pooled ratio of medians is kept beside it).
            paired = {q: [a / h if h > 0 else float("nan")
                          for a, h in zip(added[t][q], added["haproxy"][q])] for q in ("p50", "p99")}
            out[variant][t] = {"p50_us": median([r["p50_us"] for r in runs]),
                               "p99_us": median([r["p99_us"] for r in runs]),
                               "p999_us": median([r["p999_us"] for r in runs]),
                               "added_p50_us": median(added[t]["p50"]),
                               "added_p99_us": median(added[t]["p99"]),
                               "paired_p50_vs_haproxy": median(paired["p50"]),
                               "paired_p99_vs_haproxy": median(paired["p99"]),
                               "paired_p99_range": [min(paired["p99"]), max(paired["p99"])],
                               "runs_p50_us": [r["p50_us"] for r in runs],
                               "runs_p99_us": [r["p99_us"] for r in runs]}
    for p in list(proxies.values()) + [hirc] + extra:
        p.stop()
    if shutil.which("valgrind"):
        out["instructions"] = latency_instructions(work, eport)
    else:
        log("valgrind not found: no instruction counts (BENCH_PROFILERS=1 installs it)")
    echo.stop()
    return out


def latency_instructions(work, eport):
    """User-space instructions per round trip in each proxy, counted by callgrind: deterministic
    where the timings are not. Each proxy runs twice under callgrind, for N1 and N2 round trips
    (no warm-up); (total(N2) - total(N1)) / (N2 - N1) leaves out start-up and shutdown."""
    n1, n2 = 2000, 12000
    targets = [("handover (raw)", "handover", "raw", None), ("handover (irc)", "handover", "irc", None),
               ("haproxy", "haproxy", "raw", None)]
    if BASELINE:
        targets.append(("baseline handover (raw)", "handover", "raw", BASELINE))
    out = {}
    for name, kind, proto, binary in targets:
        totals, session = [], []
        for n in (n1, n2):
            cg = os.path.join(work, f"callgrind-{slug(name)}-{n}.out")
            wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}"]
            p = start_proxy(kind, [("echo", proto, eport)], work, f"-cg-{slug(name)}-{n}", wrap=wrap,
                            binary=binary)
            run_json([BENCH, "latency", "--connect", f"127.0.0.1:{p.ports['echo']}", "--count", str(n),
                      "--warmup", "0", "--size", "100"], timeout=900)
            p.proc.p.send_signal(signal.SIGTERM)  # valgrind writes its file on the way out
            p.proc.p.wait(120)
            p.stop()
            totals.append(callgrind_total(cg))
            session.append(callgrind_inclusive(cg, "src/session/mod.rs:<tracing::instrument::Instrumented<T>"))
        per = (totals[1] - totals[0]) / (n2 - n1)
        ses = (session[1] - session[0]) / (n2 - n1) if None not in session else None
        out[name] = {"instr_per_rt": per, "session_task_instr_per_rt": ses}
        log(f"instructions per round trip, {name}: {per:.0f}" + (f" (session task {ses:.0f})" if ses else ""))
    return out


def callgrind_total(path):
    for line in open(path):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {path}")


def callgrind_inclusive(path, needle):
    """The inclusive count of the first function whose name contains `needle`, or None."""
    if not shutil.which("callgrind_annotate"):
        return None
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", path], capture_output=True,
                          text=True).stdout
    for line in text.splitlines():
        if needle in line:
            return int(line.split()[0].replace(",", ""))
    return None


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


# ----------------------------------------------------------------------------------------
# 3: memory per idle session


def bench_memory(cfg, work, R):
    backends = {}
    for mode in ("raw", "irc"):
        port = free_port()
        Proc(f"idle-{mode}", [BENCH, "idle-backend", "--listen", f"127.0.0.1:{port}", "--mode", mode], work)
        wait_port(port)
        backends[mode] = port
    out = {}
    for mode in ("raw", "irc"):
        for n in cfg["counts"]:
            # An A/B run adds the other handover binary (same config) as one more proxy.
            for kind in ("handover", "haproxy", "nginx") + (("baseline handover",) if BASELINE else ()):
                if kind == "baseline handover":
                    px = start_proxy("handover", [("idle", mode, backends[mode])], work,
                                     f"-mem-{mode}-{n}-base", binary=BASELINE)
                else:
                    px = start_proxy(kind, [("idle", mode, backends[mode])], work, f"-mem-{mode}-{n}")
                time.sleep(0.5)
                base_rss, base_pss = rss_kib(px.pid)
                hold = subprocess.Popen(
                    [BENCH, "hold", "--connect", f"127.0.0.1:{px.ports['idle']}", "--count", str(n),
                     "--mode", mode, "--concurrency", "100", "--max-secs", "300"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=work)
                PROCS.append(_Popen("hold", hold))
                ready = json.loads(hold.stdout.readline())
                time.sleep(1.0)
                rss, pss = rss_kib(px.pid)
                hold.stdin.write("quit\n")
                hold.stdin.flush()
                hold.wait(30)
                PROCS.pop()
                px.stop()
                key = f"{mode}/{n}/{kind}"
                held = ready["ready"]
                out[key] = {"mode": mode, "count": n, "proxy": kind, "held": held,
                            "failed": ready["failed"], "base_rss_kib": base_rss, "rss_kib": rss,
                            "pss_kib": pss, "kib_per_session": rss / max(held, 1),
                            "marginal_kib_per_session": (rss - base_rss) / max(held, 1),
                            "marginal_pss_kib_per_session": (pss - base_pss) / max(held, 1)}
                log(f"memory {key}: held {held}/{n}, RSS {base_rss} -> {rss} KiB, "
                    f"{rss / max(held, 1):.2f} KiB/session ({(rss - base_rss) / max(held, 1):.2f} marginal)")
                time.sleep(0.5)
    return out


class _Popen:
    """A bare Popen in PROCS (for the stop-everything path)."""

    def __init__(self, name, p):
        self.name, self.p, self.pid = name, p, p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


# ----------------------------------------------------------------------------------------
# 4: drain between two linked ngircd


# MaxConnections 12000, not 0 (unlimited): ngircd keeps its connections in one array indexed
# by socket, 100 long when unlimited, and reallocs it when a socket number passes the end; the
# realloc moves the zlib streams of the compressed server link, zlib refuses them
# ("Compression error: code -2") and the a-b link drops after ~95 users. With room for every
# socket up front (5000 users on each side at most here) the array never moves.
# ConnectRetry 600: should the link break anyway, it stays broken for the run (a relink in the
# middle of a drain kills colliding nicks), and the report says the network was split.
NGIRCD_CONF = """[Global]
\tName = {me}.bench
\tInfo = handover bench {me}
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = hello from {me}
\tPidFile = {dir}/{me}.pid
\tServerUID = 0
\tServerGID = 0
[Limits]
\tMaxConnections = 12000
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxPenaltyTime = 0
\tConnectRetry = 600
\tPingTimeout = 300
\tMaxNickLength = 30
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tRequireAuthPing = no
[Server]
\tName = {peer}.bench
\tHost = 127.0.0.1
\tPort = {peer_port}
\tMyPassword = link-{me}
\tPeerPassword = link-{peer}
\tPassive = {passive}
"""


def histogram(metrics, name, labels):
    """(bounds, cumulative counts, count) of one Prometheus histogram series."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{") and labels in line:
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    return buckets


def quantile(buckets, q):
    """histogram_quantile as Prometheus does it: linear inside the bucket."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in buckets:
        if c >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_b, prev_c = b, c
    return prev_b


def start_irc_holders(cfg, work, port, n, prefix, name):
    """`bench hold` with n IRC sessions registered on port (paced like the drain): the
    process, and its first report."""
    hold = subprocess.Popen(
        [BENCH, "hold", "--connect", f"127.0.0.1:{port}", "--count", str(n), "--mode", "irc",
         "--concurrency", str(cfg["drain_setup_concurrency"]), "--rate", str(cfg["drain_setup_rate"]),
         "--prefix", prefix, "--max-secs", "900"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=work)
    PROCS.append(_Popen(name, hold))
    return hold, json.loads(hold.stdout.readline())


def bench_drain(cfg, work, R):
    out = {}
    for n in cfg["drain_counts"]:
        d = os.path.join(work, f"drain-{n}")
        os.makedirs(d)
        pa, pb = free_port(), free_port()
        open(f"{d}/a.conf", "w").write(NGIRCD_CONF.format(me="a", peer="b", port=pa, peer_port=pb, dir=d, passive="no"))
        open(f"{d}/b.conf", "w").write(NGIRCD_CONF.format(me="b", peer="a", port=pb, peer_port=pa, dir=d, passive="yes"))
        ga = Proc(f"ngircd-a-{n}", ["ngircd", "-n", "-f", f"{d}/a.conf"], work)
        gb = Proc(f"ngircd-b-{n}", ["ngircd", "-n", "-f", f"{d}/b.conf"], work)
        wait_port(pa)
        wait_port(pb)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = open(ga.logpath, errors="replace").read()
            if 'Server "b.bench" registered' in text or "Synchronization with \"b.bench\" done" in text:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("ngircd a and b did not link in 30 s")
        extra = (
            "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:%d\"\n\n"
            "[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:%d\"\n\n"
            "[migration]\nmax_concurrent = 10\nmax_per_second = %d\n" % (pa, pb, cfg["drain_max_per_second"])
        )
        px = start_proxy_irc_pair(work, n, extra)
        admin = f"http://127.0.0.1:{px.admin}"
        http("POST", f"{admin}/backends/b/drain")  # new sessions all land on a
        hold, ready = start_irc_holders(cfg, work, px.ports["irc"], n, "u", "hold-drain")
        log(f"drain {n}: {ready['ready']}/{n} sessions registered through handover on a in {ready['secs']:.2f}s")
        http("POST", f"{admin}/backends/b/undrain")
        time.sleep(1.0)
        before = sum(open(g.logpath, errors="replace").read().count("Compression error!)") for g in (ga, gb))
        if before:
            log(f"drain {n}: WARNING the a-b link broke while the sessions registered: the drain runs on a split network")
        cpu0 = {k: cpu_secs(p.pid) for k, p in (("handover", px.proc), ("ngircd_a", ga), ("ngircd_b", gb))}
        t0 = time.monotonic()
        reply = json.loads(http("POST", f"{admin}/backends/a/drain?wait=true", timeout=900))
        drain_secs = time.monotonic() - t0
        # Who was busy: CPU seconds each process spent during the drain.
        cpu = {k: cpu_secs(p.pid) - cpu0[k] for k, p in (("handover", px.proc), ("ngircd_a", ga), ("ngircd_b", gb))}
        log(f"drain {n}: CPU seconds during the drain: {cpu}")
        log(f"drain {n}: {reply} in {drain_secs:.2f}s")
        hold.stdin.write("check\n")
        hold.stdin.flush()
        check = json.loads(hold.stdout.readline())
        log(f"drain {n}: check {check}")
        metrics = http("GET", f"{admin}/metrics")
        backends = json.loads(http("GET", f"{admin}/backends"))
        pause = histogram(metrics, "handover_client_pause_seconds", 'protocol="irc"')
        dur = histogram(metrics, "handover_migration_duration_seconds", 'protocol="irc"')
        phases = {}
        for ph in ("connect", "register", "flush", "settle"):
            b = histogram(metrics, "handover_migration_phase_seconds", f'protocol="irc",phase="{ph}"')
            total = [float(l.split()[-1]) for l in metrics.splitlines()
                     if l.startswith("handover_migration_phase_seconds_sum{") and f'phase="{ph}"' in l]
            phases[ph] = {"p50_ms": quantile(b, 0.5) * 1000, "p99_ms": quantile(b, 0.99) * 1000,
                          "sum_s": total[0] if total else float("nan")}
        log(f"drain {n}: phases {phases}")
        ok = sum(float(l.split()[-1]) for l in metrics.splitlines()
                 if l.startswith("handover_migrations_total") and 'outcome="ok"' in l)
        notok = sum(float(l.split()[-1]) for l in metrics.splitlines()
                    if l.startswith("handover_migrations_total") and 'outcome="ok"' not in l)
        closed = {re.search(r'reason="([^"]+)"', l).group(1): float(l.split()[-1])
                  for l in metrics.splitlines() if l.startswith("handover_sessions_closed_total{")}
        if check["closed"]:
            log(f"drain {n}: sessions closed by handover, by reason: {closed}")
        # Did the a-b server link break (ngircd's zlib link has been seen to, under bursts)?
        # A split network makes a drain register on a b that doesn't know a's users.
        link_trouble = sum(open(g.logpath, errors="replace").read().count(w)
                           for g in (ga, gb) for w in ("Compression error!)", "Nick collision)"))
        hold.stdin.write("quit\n")
        hold.stdin.flush()
        hold.wait(60)
        PROCS.remove(next(p for p in PROCS if p.name == "hold-drain"))
        px.stop()
        time.sleep(1.0)
        # Reference, last (so that its burst cannot disturb the drain): how fast b registers
        # n clients straight, paced like the drain (10 at once), while it holds the n moved
        # ones until just before.
        cpu0 = cpu_secs(gb.pid)
        ref = run_json([BENCH, "hold", "--connect", f"127.0.0.1:{pb}", "--count", str(n), "--mode", "irc",
                        "--concurrency", "10", "--prefix", "r", "--max-secs", "300"], timeout=400)
        ref["cpu_secs_b"] = cpu_secs(gb.pid) - cpu0
        log(f"drain {n}: direct registration on b: {ref['ready']}/{n} in {ref['secs']:.2f}s")
        time.sleep(1.0)
        # The floor for the drain itself: n clients held directly on a each do by hand what a
        # migration asks of the servers (register a temporary nick on b with a PING barrier,
        # a PING on a, QUIT on a and wait for the close, NICK back on b), 10 at once like the
        # drain, with no proxy in the way.
        own, own_ready = start_irc_holders(cfg, work, pa, n, "m", "hold-move")
        time.sleep(1.0)
        cpu0 = {k: cpu_secs(p.pid) for k, p in (("ngircd_a", ga), ("ngircd_b", gb))}
        own.stdin.write(f"move 127.0.0.1:{pb} 10\n")
        own.stdin.flush()
        by_hand = json.loads(own.stdout.readline())
        by_hand["cpu_secs"] = {k: cpu_secs(p.pid) - cpu0[k] for k, p in (("ngircd_a", ga), ("ngircd_b", gb))}
        own.stdin.write("check\n")
        own.stdin.flush()
        by_hand["check"] = json.loads(own.stdout.readline())
        own.stdin.write("quit\n")
        own.stdin.flush()
        own.wait(60)
        PROCS.remove(next(p for p in PROCS if p.name == "hold-move"))
        log(f"drain {n}: the same moves by hand, no proxy ({own_ready['ready']} held on a): {by_hand}")
        ga.stop()
        gb.stop()
        out[n] = {"sessions": n, "registered": ready["ready"], "drain_secs": drain_secs,
                  "reply": reply, "migrations_ok": ok, "migrations_not_ok": notok,
                  "check": check, "kept": check["pongs"], "closed": check["closed"],
                  "closed_by_reason": closed, "link_trouble": link_trouble,
                  "link_broke_before_drain": before,
                  "second_welcomes": check["welcomes_after_ready"],
                  "direct_register_secs": ref["secs"], "direct_registered": ref["ready"],
                  "direct_register_cpu_b": ref["cpu_secs_b"], "nick_changes": check.get("nick_changes"),
                  "drain_over_direct": drain_secs / ref["secs"] if ref["secs"] else None,
                  "by_hand": by_hand,
                  "drain_over_by_hand": drain_secs / by_hand["secs"] if by_hand["secs"] else None,
                  "pause_p50_ms": quantile(pause, 0.5) * 1000, "pause_p99_ms": quantile(pause, 0.99) * 1000,
                  "duration_p50_ms": quantile(dur, 0.5) * 1000, "duration_p99_ms": quantile(dur, 0.99) * 1000,
                  "pause_buckets": pause, "duration_buckets": dur,
                  "phases": phases, "cpu_secs": cpu,
                  "backends_after": backends}
        time.sleep(1.0)
    return out


def start_proxy_irc_pair(work, n, extra):
    admin = free_port()
    port = free_port()
    text = (f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n[[listener]]\nname = "irc"\n'
            f'listen = "127.0.0.1:{port}"\nprotocol = "irc"\nbackends = ["a", "b"]\nmax_sessions = 9000\n\n'
            + extra)
    d = os.path.join(work, f"handover-drain-{n}")
    os.makedirs(d, exist_ok=True)
    cfgp = os.path.join(d, "handover.toml")
    open(cfgp, "w").write(text)
    # info: one log line per migration and per unusual close, to explain any lost session.
    proc = Proc(f"handover-drain-{n}", [HANDOVER, "serve", "--config", cfgp], work, env={"RUST_LOG": "info"})
    wait_port(port)
    wait_port(admin)
    return Proxy("handover", proc, {"irc": port}, admin)


# ----------------------------------------------------------------------------------------
# 5: accept rate


def bench_accept(cfg, work, R):
    eport = free_port()
    Proc("echo-accept", [BENCH, "echo-server", "--listen", f"127.0.0.1:{eport}"], work)
    wait_port(eport)
    proxies = {k: start_proxy(k, [("echo", "raw", eport)], work, "-acc")
               for k in ("handover", "haproxy", "nginx", "socat")}
    if BASELINE:
        # An A/B run: another handover binary beside this one, same config.
        proxies["baseline handover"] = start_proxy("handover", [("echo", "raw", eport)], work,
                                                   "-acc-base", binary=BASELINE)
    targets = ["direct"] + list(proxies)
    res = {t: [] for t in targets}
    for rnd in range(cfg["rounds"]):
        for t in targets:
            port = eport if t == "direct" else proxies[t].ports["echo"]
            pid = None if t == "direct" else proxies[t].pid
            c0 = cpu_secs(pid) if pid else 0
            r = run_json([BENCH, "accept-rate", "--connect", f"127.0.0.1:{port}", "--secs",
                          str(cfg["accept_secs"]), "--concurrency", "32", "--max", "100000"], timeout=120)
            c1 = cpu_secs(pid) if pid else 0
            r["cpu_us_per_session"] = (c1 - c0) / max(r["sessions"], 1) * 1e6 if pid else None
            res[t].append(r)
            log(f"accept round {rnd + 1} {t}: {r['per_sec']:.0f}/s, failed {r['failed']}")
            time.sleep(1.0)
    for p in proxies.values():
        p.stop()
    return {t: {"per_sec": median([r["per_sec"] for r in runs]),
                "failed": sum(r["failed"] for r in runs),
                "p99_us": median([r["p99_us"] for r in runs]),
                "cpu_us_per_session": median([r["cpu_us_per_session"] for r in runs]) if t != "direct" else None,
                "runs_per_sec": [round(r["per_sec"]) for r in runs]}
            for t, runs in res.items()}


# ----------------------------------------------------------------------------------------
# report


def fmt(x, nd=2):
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{nd}f}"


def ratio(a, b):
    if not a or not b or a != a or b != b:
        return "–"
    return f"{a / b:.2f}×"


def report(res, R, cfg):
    md = []
    m = res["machine"]
    md.append(f"Run {res['started']}, {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gib']:.0f} GiB, "
              f"kernel {m['kernel']}; mode `{res['mode']}`.\n")
    md.append("Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + "\n")
    if res.get("load"):
        # The machine is shared: its 1-minute load average before and after each section says
        # how busy it was besides this run (the run itself adds up to about 2 while it loads).
        md.append("Load average (1 min) before → after each section: " + ", ".join(
            f"{s} {a[0]:.2f} → {b[0]:.2f}" for s, (a, b) in res["load"].items()) + ".\n")
    if "throughput" in res:
        for streams, by in res["throughput"].items():
            md.append(f"\n### Throughput, {streams} stream{'s' if int(streams) > 1 else ''} (iperf3 -P {streams}, {cfg['secs']} s, median of {cfg['rounds']})\n")
            md.append("| path | Gbit/s | vs direct | vs haproxy | vs nginx | CPU s per GB | CPU vs haproxy | runs |")
            md.append("|---|---:|---:|---:|---:|---:|---:|---|")
            for t, v in by.items():
                md.append(f"| {t} | {fmt(v['gbps'])} | {ratio(v['gbps'], by['direct']['gbps'])} | "
                          f"{ratio(v['gbps'], by['haproxy']['gbps'])} | {ratio(v['gbps'], by['nginx']['gbps'])} | "
                          f"{fmt(v['cpu_s_per_gb'], 3)} | {ratio(v['cpu_s_per_gb'], by['haproxy']['cpu_s_per_gb']) if v['cpu_s_per_gb'] else '–'} | "
                          f"{', '.join(str(x) for x in v['runs_gbps'])} |")
    if "latency" in res:
        for variant, L in res["latency"].items():
            if variant == "instructions":
                continue
            where = {"unpinned": "unpinned (the scheduler places client, server and proxy)",
                     "one-cpu": "client, echo server and proxy pinned to one CPU"}.get(variant, variant)
            rounds = cfg.get("lat_rounds", cfg["rounds"])
            md.append(f"\n### Latency, 100-byte line request/echo, one connection, {where} ({cfg['count']} round trips after {cfg['warmup']} warm-up, median of {rounds} rounds, every other round in reverse order)\n")
            md.append("Pooled: the median over rounds of the added latency, then its ratio to haproxy's. "
                      "Paired: the ratio to haproxy's in the same round, then the median (and range) of those ratios.\n")
            md.append("| path | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p50 vs haproxy (pooled / paired) | added p99 vs haproxy (pooled / paired) | paired p99 ratio, range |")
            md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for t, v in L.items():
                d = t == "direct"
                rng = v.get("paired_p99_range")
                md.append(f"| {t} | {fmt(v['p50_us'], 1)} | {fmt(v['p99_us'], 1)} | {fmt(v['p999_us'], 1)} | "
                          f"{'–' if d else fmt(v['added_p50_us'], 1)} | {'–' if d else fmt(v['added_p99_us'], 1)} | "
                          f"{'–' if d else ratio(v['added_p50_us'], L['haproxy']['added_p50_us']) + ' / ' + fmt(v.get('paired_p50_vs_haproxy', float('nan'))) + '×'} | "
                          f"{'–' if d else ratio(v['added_p99_us'], L['haproxy']['added_p99_us']) + ' / ' + fmt(v.get('paired_p99_vs_haproxy', float('nan'))) + '×'} | "
                          f"{'–' if d or not rng else f'{rng[0]:.2f} to {rng[1]:.2f}×'} |")
        I = res["latency"].get("instructions")
        if I:
            md.append("\n### Instructions per round trip (callgrind, user space, the proxy's whole process; deterministic)\n")
            md.append("| path | instructions per round trip | vs haproxy | of which handover's session task |")
            md.append("|---|---:|---:|---:|")
            for t, v in I.items():
                ses = v.get("session_task_instr_per_rt")
                md.append(f"| {t} | {v['instr_per_rt']:.0f} | {ratio(v['instr_per_rt'], I['haproxy']['instr_per_rt'])} | "
                          f"{'–' if ses is None or t == 'haproxy' else f'{ses:.0f}'} |")
    if "memory" in res:
        M = res["memory"]
        md.append("\n### Memory per idle session (RSS of the whole process tree, from /proc)\n")
        md.append("| sessions | protocol | proxy | held | RSS before KiB | RSS holding KiB | KiB/session (RSS ÷ n) | marginal KiB/session | marginal PSS KiB/session | marginal vs haproxy |")
        md.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for key, v in M.items():
            hk = f"{v['mode']}/{v['count']}/haproxy"
            md.append(f"| {v['count']} | {v['mode']} | {v['proxy']} | {v['held']} | {v['base_rss_kib']} | {v['rss_kib']} | "
                      f"{fmt(v['kib_per_session'])} | {fmt(v['marginal_kib_per_session'])} | {fmt(v['marginal_pss_kib_per_session'])} | "
                      f"{ratio(v['marginal_kib_per_session'], M[hk]['marginal_kib_per_session']) if hk in M else '–'} |")
    if "drain" in res:
        md.append(f"\n### Drain: IRC sessions moved off ngircd a onto ngircd b, started linked (max_concurrent 10, max_per_second {cfg['drain_max_per_second']})\n")
        md.append("| sessions | migrated | failed | kept (PONG after) | closed | second welcomes | NICK lines seen | a–b network during the drain | drain s | pause p50 ms | pause p99 ms | migration p50 ms | migration p99 ms |")
        md.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, v in res["drain"].items():
            md.append(f"| {n} | {v['reply'].get('migrated')} | {v['reply'].get('failed')} | {v['kept']} | {v['closed']} | {v['second_welcomes']} | {v.get('nick_changes', '–')} | {'split (link broke in set-up)' if v.get('link_broke_before_drain') else 'linked'} | "
                      f"{fmt(v['drain_secs'])} | {fmt(v['pause_p50_ms'], 1)} | {fmt(v['pause_p99_ms'], 1)} | {fmt(v['duration_p50_ms'], 1)} | {fmt(v['duration_p99_ms'], 1)} |")
        md.append("\n#### Drain against its floors, and who was busy (CPU seconds of each process while it ran)\n")
        md.append("| sessions | drain s | same moves by hand, no proxy s (moved / failed) | drain ÷ by hand | direct registration on b s | drain ÷ direct registration | CPU in the drain: handover / ngircd a / ngircd b | CPU by hand: ngircd a / ngircd b | CPU of b in the direct registration |")
        md.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, v in res["drain"].items():
            bh = v.get("by_hand") or {}
            c = v.get("cpu_secs") or {}
            bc = bh.get("cpu_secs") or {}
            md.append(f"| {n} | {fmt(v['drain_secs'])} | {fmt(bh.get('secs'))} ({bh.get('moved')} / {bh.get('failed')}) | {fmt(v.get('drain_over_by_hand'))}× | "
                      f"{fmt(v['direct_register_secs'])} | {fmt(v['drain_over_direct'])}× | "
                      f"{fmt(c.get('handover'))} / {fmt(c.get('ngircd_a'))} / {fmt(c.get('ngircd_b'))} | {fmt(bc.get('ngircd_a'))} / {fmt(bc.get('ngircd_b'))} | {fmt(v.get('direct_register_cpu_b'))} |")
        md.append("\n#### Where a migration's time went (handover_migration_phase_seconds)\n")
        md.append("| sessions | connect p50 / p99 ms | register on b p50 / p99 ms | flush (a's reply) p50 / p99 ms | settle (nick back on b) p50 / p99 ms | share of the time: connect / register / flush / settle |")
        md.append("|---:|---:|---:|---:|---:|---:|")
        for n, v in res["drain"].items():
            ph = v.get("phases") or {}
            if not ph:
                continue
            total = sum(ph[k]["sum_s"] for k in ph) or 1
            cells = " | ".join(f"{fmt(ph[k]['p50_ms'], 1)} / {fmt(ph[k]['p99_ms'], 1)}" for k in ("connect", "register", "flush", "settle"))
            share = " / ".join(f"{100 * ph[k]['sum_s'] / total:.0f} %" for k in ("connect", "register", "flush", "settle"))
            md.append(f"| {n} | {cells} | {share} |")
    if "accept" in res:
        A = res["accept"]
        md.append(f"\n### Accept rate: new sessions per second (connect, 4-byte echo, close; 32 at once, {cfg['accept_secs']} s, median of {cfg['rounds']})\n")
        md.append("| path | sessions/s | vs direct | vs haproxy | vs nginx | p99 µs | proxy CPU µs/session | failed |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t, v in A.items():
            md.append(f"| {t} | {fmt(v['per_sec'], 0)} | {ratio(v['per_sec'], A['direct']['per_sec'])} | "
                      f"{ratio(v['per_sec'], A['haproxy']['per_sec'])} | {ratio(v['per_sec'], A['nginx']['per_sec'])} | "
                      f"{v['p99_us']} | {fmt(v['cpu_us_per_session'], 1)} | {v['failed']} |")
    text = "\n".join(md) + "\n"
    open(os.path.join(R, "results.md"), "w").write(text)
    return text


def plots(res, R):
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no plots")
        return
    common = ("set terminal pngcairo size 900,480 font 'DejaVu Sans,11'\n"
              "set style fill solid 0.85 border -1\nset grid ytics\nset key top right\n")
    if "throughput" in res:
        with open(f"{R}/throughput.dat", "w") as f:
            targets = list(next(iter(res["throughput"].values())).keys())
            streams = list(res["throughput"].keys())
            for t in targets:
                f.write(f'"{t}" ' + " ".join(f"{res['throughput'][s][t]['gbps']:.3f}" for s in streams) + "\n")
        series = [f"'throughput.dat' using 2:xtic(1) title '{streams[0]} stream{'s' if int(streams[0]) > 1 else ''}'"]
        series += [f"'' using {i + 2} title '{s} streams'" for i, s in enumerate(streams) if i > 0]
        gp(R, "throughput", common + "set output 'throughput.png'\nset title 'iperf3 throughput through each proxy (loopback, 2 cores)'\n"
           "set ylabel 'Gbit/s'\nset style data histograms\nset style histogram clustered gap 1\nset yrange [0:*]\n"
           "plot " + ", ".join(series) + "\n")
    if "latency" in res:
        for variant in [v for v in res["latency"] if v != "instructions"]:
            lines = []
            for t in res["latency"][variant]:
                sp = f"{R}/latency-{variant}-{slug(t)}.samples"
                if not os.path.exists(sp):
                    continue
                xs = sorted(float(x) for x in open(sp))
                with open(f"{R}/latency-{variant}-{slug(t)}.cdf", "w") as f:
                    step = max(1, len(xs) // 2000)
                    for i in range(0, len(xs), step):
                        f.write(f"{xs[i]:.3f} {(i + 1) / len(xs):.5f}\n")
                    f.write(f"{xs[-1]:.3f} 1.0\n")
                lines.append(f"'latency-{variant}-{slug(t)}.cdf' using 1:2 with lines lw 2 title '{t}'")
            gp(R, f"latency-{variant}", common + f"set output 'latency_cdf_{variant}.png'\n"
               f"set title 'Round trip of a 100-byte line (request/echo), CDF, {variant}'\n"
               "set xlabel 'round trip, µs (log scale)'\nset ylabel 'fraction of round trips'\nset logscale x\nset key bottom right\n"
               "set yrange [0:1]\nplot " + ", ".join(lines) + "\n")
    if "memory" in res:
        groups = sorted({(v["count"], v["mode"]) for v in res["memory"].values()})
        with open(f"{R}/memory.dat", "w") as f:
            for n, mode in groups:
                vals = [res["memory"].get(f"{mode}/{n}/{k}", {}).get("marginal_kib_per_session", float("nan")) for k in ("handover", "haproxy", "nginx")]
                f.write(f'"{mode}, {n}" ' + " ".join(f"{v:.3f}" for v in vals) + "\n")
        gp(R, "memory", common + "set output 'memory.png'\nset title 'Memory per idle session (marginal RSS of the process tree)'\n"
           "set ylabel 'KiB per session'\nset style data histograms\nset style histogram clustered gap 1\nset yrange [0:*]\nset key top left\n"
           "plot 'memory.dat' using 2:xtic(1) title 'handover', '' using 3 title 'haproxy', '' using 4 title 'nginx'\n")
    if "accept" in res:
        with open(f"{R}/accept.dat", "w") as f:
            for t, v in res["accept"].items():
                f.write(f'"{t}" {v["per_sec"]:.1f}\n')
        gp(R, "accept", common + "set output 'accept.png'\nset title 'New sessions per second (connect, echo 4 bytes, close)'\n"
           "set ylabel 'sessions/s'\nset style data histograms\nset yrange [0:*]\nset boxwidth 0.7\n"
           "plot 'accept.dat' using 2:xtic(1) notitle\n")

    if res.get("drain"):
        # handover's own histograms: sessions per bucket (not cumulative), one series per
        # drain size and measure, on the bucket bounds as the x axis.
        series, rows = [], None
        for n, d in res["drain"].items():
            for key, what in (("duration_buckets", "migration"), ("pause_buckets", "client pause")):
                b = d[key]
                counts = [c - (b[i - 1][1] if i else 0) for i, (_, c) in enumerate(b)]
                if rows is None:
                    rows = [["≤ inf" if le == float("inf") else f"≤ {le * 1000:g}"] for le, _ in b]
                for row, c in zip(rows, counts):
                    row.append(f"{c:.0f}")
                series.append(f"{what}, {n} sessions")
        while rows and len(rows) > 1 and all(c == "0" for c in rows[-1][1:]):
            rows.pop()  # the empty buckets above the slowest migration
        if rows:
            with open(f"{R}/drain.dat", "w") as f:
                for row in rows:
                    f.write(f'"{row[0]}" ' + " ".join(row[1:]) + "\n")
            cols = [f"'drain.dat' using 2:xtic(1) title '{series[0]}'"]
            cols += [f"'' using {i + 2} title '{t}'" for i, t in enumerate(series) if i > 0]
            gp(R, "drain", common + "set termoption noenhanced\nset output 'drain.png'\n"
               "set title 'Drain ngircd a -> b: migrations per bucket of handover_migration_duration_seconds and handover_client_pause_seconds'\n"
               "set title font ',10'\nset xlabel 'bucket, ms'\nset ylabel 'sessions'\nset style data histograms\n"
               "set style histogram clustered gap 1\nset yrange [0:*]\nset xtics rotate by -35\n"
               "plot " + ", ".join(cols) + "\n")


def gp(R, name, script):
    p = os.path.join(R, f"{name}.gp")
    open(p, "w").write(script)
    r = subprocess.run(["gnuplot", p], cwd=R, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"gnuplot {name} failed: {r.stderr.strip()}")


def versions():
    def first(cmd, pat=r"(\d+\.\d+[\w.\-]*)"):
        try:
            o = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            m = re.search(pat, o.stdout + o.stderr)
            return m.group(1) if m else "?"
        except Exception:
            return "?"
    return {"haproxy": first(["haproxy", "-v"]), "nginx": first(["nginx", "-v"]),
            "socat": first(["socat", "-V"], r"socat version (\S+)"), "iperf3": first(["iperf3", "-v"]),
            "ngircd": first(["ngircd", "--version"]), "rustc": first(["rustc", "--version"])}


def machine():
    model = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) / 1024 / 1024
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": mem, "kernel": os.uname().release,
            "fd_limit": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)}


CONFIGS = {
    "full": {"streams": [1, 8], "secs": 5, "rounds": 5, "lat_rounds": 9, "count": 20000, "warmup": 2000,
             "counts": [1000, 8000], "drain_counts": [1000, 5000], "accept_secs": 3,
             # Pacing: at most 10 registrations in flight (ngircd's listen backlog is 10), no rate cap.
             "drain_setup_concurrency": 10, "drain_setup_rate": 0, "drain_max_per_second": 100000},
    "quick": {"streams": [1, 8], "secs": 1, "rounds": 1, "count": 2000, "warmup": 200,
              "counts": [200], "drain_counts": [20], "accept_secs": 0.5,
              "drain_setup_concurrency": 10, "drain_setup_rate": 0, "drain_max_per_second": 100000},
}
SECTIONS = ["throughput", "latency", "memory", "accept", "drain"]


def main():
    global HANDOVER, BENCH, NGINX_STREAM, BASELINE
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--keep-work", action="store_true", help="keep the logs and configs of every process")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--baseline-handover", default=None,
                    help="latency, memory and accept: also measure this handover binary (an A/B run against, say, main's build)")
    a = ap.parse_args()
    BASELINE = os.path.abspath(a.baseline_handover) if a.baseline_handover else None
    HANDOVER = os.path.join(a.target_dir, "release", "handover")
    BENCH = os.path.join(a.target_dir, "release", "examples", "bench")
    NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"
    mode = "quick" if a.quick else "full"
    cfg = CONFIGS[mode]
    R = os.path.abspath(a.out)
    os.makedirs(R, exist_ok=True)
    work = tempfile.mkdtemp(prefix="handover-bench.")
    res = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": mode, "config": cfg,
           "machine": machine(), "versions": versions(), "load": {}}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for s in a.only.split(","):
            before = os.getloadavg()
            log(f"== {s} (load average {before[0]:.2f} {before[1]:.2f} {before[2]:.2f})")
            res[s] = globals()[f"bench_{s}"](cfg, work, R)
            res["load"][s] = (before, os.getloadavg())
            stop_all()
            json.dump(res, open(os.path.join(R, "results.json"), "w"), indent=1, default=str)
    finally:
        stop_all()
    print(report(res, R, cfg))
    plots(res, R)
    if a.keep_work:
        log(f"logs and configs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    log(f"results in {R}")


if __name__ == "__main__":
    main()
