#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: the A/B measure a noisy machine cannot spoil.

    python3 bench/instructions.py [--requests-seconds 6] [--connections 10] BINARY [BINARY ...]

For each gateway binary (for example target/release/gateway and one built from an older
commit) and each config variant (plain proxy; access log on, to a file; three endpoints
with least_request; with --variants also "dial 0", "shadow 10%", "shadow 100%", "trace 0%",
"trace 1%", "trace 100%"), starts the gateway under `valgrind --tool=callgrind` with
instrumentation off, warms it up, switches it on, runs wrk against it, dumps, and prints the
user-space instructions per request (all threads: the worker and the log writer). The
kernel's share (loopback TCP) is not counted, so this is the part our code decides.
callgrind counts are repeatable for the same binary and input, whatever else the machine
runs; wall-clock figures under valgrind mean nothing, so none are printed.

The upstream is an nginx answering a fixed 22-byte body on three ports (as compare.py's).
With --keep-profiles DIR each measurement's callgrind dump is copied there, so two builds
can be compared function by function with callgrind_annotate.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import PATH, need, start_nginx, wait_port  # noqa: E402

UPSTREAM_PORTS = (18070, 18071, 18072)
GATEWAY_PORT = 18073
ADMIN_PORT = 18069


def gateway_config(variant):
    users = f'url = "http://127.0.0.1:{UPSTREAM_PORTS[0]}"'
    if variant == "3 endpoints":
        urls = ", ".join(f'"http://127.0.0.1:{port}"' for port in UPSTREAM_PORTS)
        users = f'endpoints = [{urls}]\nbalance = "least_request"'
    return f"""
[server]
listen = "127.0.0.1:{GATEWAY_PORT}"
admin_listen = "127.0.0.1:{ADMIN_PORT}"
default_upstream = "monolith"
workers = 1
access_log = {"true" if variant == "access log" else "false"}

[upstreams.monolith]
url = "http://127.0.0.1:{UPSTREAM_PORTS[0]}"
[upstreams.users]
{users}

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
{ROUTE_EXTRA.get(variant, "")}
{TELEMETRY.get(variant, "")}
"""


# The shadow variants: the monolith answers (dial 0), and `shadow` copies that share to the
# service. With both, the mirror phase's cost on a request that is not copied is
# (shadow 10%) - (dial 0) - 0.1 x the cost of one copy, which (shadow 100%) - (shadow 10%) = 0.9 x.
ROUTE_EXTRA = {
    "dial 0": "rollout_percent = 0",
    "shadow 10%": "rollout_percent = 0\nshadow = { percent = 10.0 }",
    "shadow 100%": "rollout_percent = 0\nshadow = { percent = 100.0, max_in_flight = 1000 }",
}


# The tracing variants export spans over OTLP/HTTP to the upstream (it answers the POST).
TELEMETRY = {
    f"trace {percent}%": f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{UPSTREAM_PORTS[0]}"\n'
                         f"trace_sample_percent = {percent}"
    for percent in (0, 1, 100)
}


def wrk(seconds, connections):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{GATEWAY_PORT}{PATH}"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return int(re.search(r"(\d+) requests in", out).group(1))


def measure(binary, variant, work, seconds, connections):
    config = Path(work) / "gateway.toml"
    config.write_text(gateway_config(variant))
    out_file = Path(work) / "callgrind.out"
    for old in Path(work).glob("callgrind.out*"):
        old.unlink()
    log = open(Path(work) / "gateway.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
                             str(binary), "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        try:
            wait_port(GATEWAY_PORT, timeout=60)
        except RuntimeError:
            return None, 0  # the binary refused the config (an old one without the variant's keys)
        wrk(2, connections)  # warm pools, caches and lazily registered metrics
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        requests = wrk(seconds, connections)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    total = 0
    for dump in Path(work).glob("callgrind.out*"):
        text = dump.read_text(errors="replace")
        found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
        if found and dump.name != "callgrind.out":  # the dump taken after the load
            total += int(found.group(1))
    return total / requests, requests


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="+", type=Path)
    parser.add_argument("--requests-seconds", type=int, default=6, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--variants", default="plain,access log,3 endpoints")
    parser.add_argument("--keep-profiles", type=Path,
                        help="copy each measurement's callgrind dump here (for callgrind_annotate)")
    args = parser.parse_args()
    need("nginx", "nginx-light")
    need("wrk", "wrk")
    need("valgrind", "valgrind")
    work = tempfile.mkdtemp(prefix="gateway-instructions-")
    os.makedirs(f"{work}/tmp-upstream", exist_ok=True)
    listens = "\n".join(f"    listen 127.0.0.1:{port} backlog=4096;" for port in UPSTREAM_PORTS)
    upstream = start_nginx(work, "upstream", f"""
  server {{
{listens}
    location / {{ default_type application/json; return 200 '{{"id":42,"name":"ada"}}'; }}
  }}""", "1")
    try:
        for port in UPSTREAM_PORTS:
            wait_port(port)
        variants = [v.strip() for v in args.variants.split(",")]
        print("| binary | " + " | ".join(f"{v}: instructions/request" for v in variants) + " |")
        print("|---|" + "---|" * len(variants))
        for binary in args.binaries:
            cells = []
            for variant in variants:
                per_request, requests = measure(binary.resolve(), variant, work, args.requests_seconds,
                                                args.connections)
                if per_request is None:
                    print(f"{binary} {variant}: did not start (config refused)", file=sys.stderr)
                    cells.append("-")
                    continue
                print(f"{binary} {variant}: {per_request:,.0f} instructions/request over {requests} requests",
                      file=sys.stderr)
                if args.keep_profiles:
                    args.keep_profiles.mkdir(parents=True, exist_ok=True)
                    for dump in Path(work).glob("callgrind.out.*"):
                        shutil.copy(dump, args.keep_profiles / f"{binary.name}-{variant.replace(' ', '_')}-{dump.name}")
                cells.append(f"{per_request:,.0f}")
            print(f"| {binary} | " + " | ".join(cells) + " |")
            time.sleep(0.5)
    finally:
        os.killpg(upstream.pid, signal.SIGTERM)
        upstream.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
