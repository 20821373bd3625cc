#!/usr/bin/env python3
"""Soak: wrk keeps the gateway busy while its config is reloaded and its binary upgraded.

    python3 bench/soak.py [--duration 60] [--connections 50] [--reloads 100] [--upgrades 3]

Builds the gateway in release mode, starts nginx as the upstream (a small fixed body) and
the gateway in front of it (`gateway run`, one worker), and runs wrk against the gateway
for --duration seconds. Meanwhile it rewrites routes.toml --reloads times (good and broken
edits alternating, so half are refused) and sends SIGUSR2 --upgrades times, each to the
process serving then (the pid file follows the upgrade). At the end it prints wrk's error
counts (connect, read, write, timeout, non-2xx), the requests served, the reloads the
gateway counted, and the pids it went through.

The figure to beat: Pingora, measured the same way during its graceful upgrade, lost 16
requests as read errors. nginx and HAProxy hand their sockets over too; Envoy's hot
restart and Traefik's lack of one are the other anchors (see the README).
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import LOAD_CPU, PROXY_CPU, ROOT, need, pinned, start_nginx, wait_port  # noqa: E402

UPSTREAM_PORT = 18180
GATEWAY_PORT = 18181
ADMIN_PORT = 18182


def config(dial):
    return f"""
[server]
listen = "127.0.0.1:{GATEWAY_PORT}"
admin_listen = "127.0.0.1:{ADMIN_PORT}"
default_upstream = "monolith"
workers = 1
access_log = false
pid_file = "gateway.pid"
shutdown_grace_ms = 10000

[upstreams.monolith]
url = "http://127.0.0.1:{UPSTREAM_PORT}"

[upstreams.users]
url = "http://127.0.0.1:{UPSTREAM_PORT}"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
rollout_percent = {dial}
sticky = "header:x-user"
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--upgrades", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, gateway.log)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need("nginx", "nginx-light")
    need("wrk", "wrk")
    need("taskset", "util-linux")
    subprocess.run(["cargo", "build", "--release", "-p", "gateway", "--quiet"], cwd=ROOT, check=True)
    gateway_bin = ROOT / "target" / "release" / "gateway"

    work = tempfile.mkdtemp(prefix="gateway-soak-")
    os.makedirs(f"{work}/tmp-upstream", exist_ok=True)
    routes = Path(work) / "routes.toml"
    pid_file = Path(work) / "gateway.pid"
    routes.write_text(config(0))
    upstream = gateway = None
    try:
        upstream = start_nginx(work, "upstream", f"""
  server {{
    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;
    location / {{ default_type application/json; return 200 '{{"id":42,"name":"ada"}}'; }}
  }}""", LOAD_CPU)
        log = open(Path(work) / "gateway.log", "w")
        gateway = subprocess.Popen(pinned(PROXY_CPU, [str(gateway_bin), "run", "--config", str(routes)]),
                                   stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        wait_port(UPSTREAM_PORT)
        wait_port(GATEWAY_PORT)
        wait_port(ADMIN_PORT)
        deadline = time.time() + 10
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        wrk = subprocess.Popen(
            pinned(LOAD_CPU, ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "-H", "x-user: soak",
                              f"http://127.0.0.1:{GATEWAY_PORT}/api/users/1"]),
            stdout=subprocess.PIPE, text=True)
        # Spread the events over the middle of the run, upgrades among the reloads.
        events = args.reloads + args.upgrades
        start = time.time()
        window = args.duration * 0.8
        pids = [int(pid_file.read_text())]
        upgrade_every = max(1, events // max(1, args.upgrades))
        reloads = upgrades = 0
        for i in range(events):
            time.sleep(max(0.0, start + args.duration * 0.1 + window * i / events - time.time()))
            if upgrades < args.upgrades and i % upgrade_every == upgrade_every // 2:
                # The new binary reads the file as it is: a broken one (half the edits)
                # would make it refuse, and the old process serve on. Upgrade on a good one.
                routes.write_text(config(reloads % 100))
                time.sleep(0.5)
                old = int(pid_file.read_text())
                os.kill(old, signal.SIGUSR2)
                deadline = time.time() + 30
                while time.time() < deadline and int(pid_file.read_text() or old) == old:
                    time.sleep(0.05)
                pids.append(int(pid_file.read_text()))
                upgrades += 1
            else:
                # Good and broken edits alternate; each good one moves the dial.
                text = config(reloads % 100) if reloads % 2 == 0 else config(0).replace("[[routes]]", "[[routes")
                routes.write_text(text)
                reloads += 1
        out, _ = wrk.communicate(timeout=args.duration + 60)
        # Each process counts its own reloads; all of them log to the one file.
        log_text = (Path(work) / "gateway.log").read_text()
        counts = {"ok": log_text.count('"message":"config applied"'),
                  "error": log_text.count('"message":"config refused; the running config keeps serving"'),
                  "upgrade failed": log_text.count('"message":"upgrade failed; this process keeps serving"')}
    finally:
        for proc in (upstream,):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        # The process serving last is a child of the one before it, not of this script.
        if pid_file.exists():
            last = int(pid_file.read_text())
            try:
                os.kill(last, signal.SIGTERM)
                deadline = time.time() + 30
                while time.time() < deadline:
                    os.kill(last, 0)
                    time.sleep(0.1)
            except (ProcessLookupError, ValueError):
                pass
        if gateway:
            gateway.wait(timeout=30)

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = map(int, socket_errors.groups()) if socket_errors else (0, 0, 0, 0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    print(f"soak: {args.duration} s of wrk, {args.connections} connections, {reloads} rewrites of routes.toml "
          f"(half broken), {upgrades} binary upgrades (pids {' -> '.join(map(str, pids))})")
    print()
    print("| requests | connect errors | read errors | write errors | timeouts | non-2xx | reloads applied / refused "
          "| upgrades done / failed |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {requests:,} | {connect} | {read} | {write} | {timeout} | {non_2xx} | "
          f"{counts['ok']} / {counts['error']} | {len(set(pids)) - 1} / {counts['upgrade failed']} |")
    print()
    print("the anchor: Pingora's graceful upgrade under the same kind of load lost 16 requests as read errors")
    print(json.dumps({"requests": requests, "connect": connect, "read": read, "write": write, "timeout": timeout,
                      "non_2xx": non_2xx, "reloads": counts, "upgrades": upgrades, "pids": pids}))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    failed = connect + read + write + timeout + non_2xx
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
