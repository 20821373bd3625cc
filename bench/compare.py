#!/usr/bin/env python3
"""Proxy comparison: the gateway against nginx and HAProxy, in one run, on this machine.

    python3 bench/compare.py [--rounds 3] [--duration 10] [--connections 50] [--high-connections 1000] [--perf]
                             [--baseline OLD_GATEWAY_BINARY]

Installs nginx, HAProxy and wrk from Debian's packages if they are missing, builds the
gateway in release mode, starts one upstream (nginx answering a small fixed body), and
measures, interleaved round by round so drift hits every target alike:

  direct   wrk -> upstream
  nginx    1 worker, upstream keepalive
  haproxy  1 thread, http-reuse always
  gateway  1 worker thread, access log off
  gateway, h2c upstream  the same, with `protocol = "http2"` to the upstream's h2c port:
           one multiplexed HTTP/2 connection instead of a keep-alive pool
  nginx / gateway, access log to a file  nginx's default (combined) format to a file,
           the gateway's JSON access line to a file (its stderr)
  nginx / gateway, N connections  the plain rows at --high-connections (default 1000)
           keep-alive connections; RSS is that of the largest process (nginx's worker)
  nginx / gateway, 3 endpoints  three upstream ports (one nginx, three listeners) behind
           nginx's `least_conn` upstream block and the gateway's `endpoints` with
           `least_request` (power of two choices): the balancer's cost against one endpoint
  nginx / gateway, HTTPS  the same nginx and gateway processes on a TLS port with the same
           ECDSA P-256 certificate, keep-alive connections (CPU per request)
  nginx / gateway, new TLS connections  the same ports with `Connection: close`, so every
           request is a new TCP connection and a full handshake (requests/s = handshakes/s)
  aggregate (separate table)  a 3-part aggregate on the gateway at 4 connections, against
           one part fetched directly: the aggregate should cost the slowest part + < 1 ms
  gateway, JWT RS256 (cached)  the same, on a route that requires a token; wrk sends one
           valid RS256 token (minted with the test fixture key), so after the first request
           every check is a verified-token cache hit
  gateway, JWT RS256 (cached), 50-key jwks_url refreshed every 1 s  the same token, its key
           fetched from a local JWKS server publishing 50 keys; every fetch changes the set
           (one decoy key swapped, so a key is dropped each time): the data-plane cost of
           refreshes, and whether they stall requests (p99 against the row above)
  gateway, monolith side (dial 0)  the route at dial 0, so the monolith answers: the
           baseline of the two shadow rows
  gateway, monolith side, shadow 10% ...  the same with `shadow = { percent = 10.0 }`: one
           request in ten is copied to the service (the same upstream nginx) and compared;
           the CPU includes the copies' own exchanges. Against a service that answers in
           300 ms (a local Python server), copies pile up to `max_in_flight` and the rest
           are dropped: the client's p99 must not move
  gateway, tracing 0% / 1% / 100%  the plain row with `[telemetry]` exporting spans over
           OTLP/HTTP to the upstream nginx at those sample rates (no caller traceparent):
           the cost of tracing, export included, against the plain row (printed per round)

Every proxy does the same per-request work: keep-alive to the upstream, X-Forwarded-For,
X-Forwarded-Proto and a request id. The proxy under test is pinned to CPU 0; wrk and the
upstream share CPU 1. Proxy CPU per request comes from /proc/PID/stat (utime + stime of
all the proxy's processes) divided by the requests wrk completed. Prints a markdown table
of medians with min-max. With --perf, the gateway's last measurement runs under
`perf record` (Debian's linux-perf, installed if missing) and the hottest symbols are
printed; bench/perf.data stays behind for `perf report`.

With --baseline, another gateway binary (for example one built from the previous commit)
serves the plain row's config too, as "gateway (baseline)", measured in the same
interleaved rounds (the two swap places every other round) and followed by the median of
the per-round CPU differences: the A/B run that decides whether a hot-path change is kept.
"""

import argparse
import http.server
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_PORT = 18080
UPSTREAM_H2_PORT = 18079
# Two more ports of the same upstream nginx: three "instances" for the three-endpoint rows.
UPSTREAM_EXTRA_PORTS = (18077, 18078)
TLS_PORTS = {"nginx": 18087, "gateway": 18088}
TLS_CERT = ROOT / "tests" / "fixtures" / "tls" / "api.pem"  # ECDSA P-256, for nginx and the gateway alike
TLS_KEY = ROOT / "tests" / "fixtures" / "tls" / "api.key"
PORTS = {"nginx": 18081, "haproxy": 18082, "gateway": 18083, "gateway-jwt": 18084, "gateway-baseline": 18085,
         "gateway-h2": 18086, "nginx-3": 18089, "gateway-3": 18090, "nginx-log": 18075, "gateway-log": 18074,
         "gateway-hc": 18068, "gateway-jwks": 18066, "gateway-mono": 18063, "gateway-shadow": 18062,
         "gateway-shadow-slow": 18061, "gateway-trace0": 18055, "gateway-trace1": 18054, "gateway-trace100": 18053}
GATEWAY_ADMIN_PORTS = {"gateway": 18093, "gateway-jwt": 18094, "gateway-baseline": 18095, "gateway-h2": 18096,
                       "gateway-3": 18097, "gateway-log": 18098, "gateway-hc": 18067, "gateway-jwks": 18065,
                       "gateway-mono": 18060, "gateway-shadow": 18059, "gateway-shadow-slow": 18058,
                       "gateway-trace0": 18052, "gateway-trace1": 18051, "gateway-trace100": 18050}
# Tracing rows: spans exported over OTLP/HTTP to the upstream nginx (it answers 200 to the POST).
TRACE_ROWS = {"gateway-trace0": 0, "gateway-trace1": 1, "gateway-trace100": 100}
# A service that answers after SLOW_SERVICE_SECONDS, for the slow-shadow row.
SLOW_SERVICE_PORT = 18057
SLOW_SERVICE_SECONDS = 0.3
JWKS_PORT = 18064
JWKS_KEYS = 50
FIXTURE_KEYS = ROOT / "tests" / "fixtures" / "keys"
PATH = "/api/users/42"
AGGREGATE_CONNECTIONS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
LOAD_CPU = "1"


def need(binary, package):
    if shutil.which(binary):
        return
    if os.geteuid() != 0:
        sys.exit(f"{binary} is missing: apt-get install {package}")
    print(f"installing {package} ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def pinned(cpu, argv):
    return ["taskset", "-c", cpu] + argv


def nginx_conf(work, body):
    return f"""
worker_processes 1;
daemon off;
pid {work}/nginx-{{name}}.pid;
error_log {work}/nginx-{{name}}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp-{{name}};
  proxy_temp_path {work}/tmp-{{name}};
  fastcgi_temp_path {work}/tmp-{{name}};
  uwsgi_temp_path {work}/tmp-{{name}};
  scgi_temp_path {work}/tmp-{{name}};
  keepalive_requests 1000000;
  {body}
}}
"""


def start_nginx(work, name, body, cpu):
    conf = Path(work) / f"nginx-{name}.conf"
    conf.write_text(nginx_conf(work, body).replace("{name}", name))
    return subprocess.Popen(pinned(cpu, ["nginx", "-c", str(conf), "-p", work]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def process_tree(pid):
    """The pid and all its descendants (nginx forks its worker)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        if children.exists():
            kids = [int(p) for p in children.read_text().split()]
            pids += kids
            frontier += kids
    return pids


def rss_mib(pid):
    """Resident memory of the largest process in the tree (nginx: its worker), MiB."""
    largest = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            largest = max(largest, int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)))
        except (FileNotFoundError, AttributeError):
            pass
    return largest / 1024


def cpu_ticks(pid):
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, IndexError):
            pass
    return total


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def serve_json(port, body, http11=False):
    """A threaded JSON server on loopback in the background: `body()` makes each answer's
    bytes (it may count, change or wait)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if http11 else "HTTP/1.0"

        def do_GET(self):  # noqa: N802 (the http.server API)
            payload = body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def serve_rotating_jwks():
    """A JWKS server on loopback: the fixture's rsa-1 key and 48 copies of its material
    under other kids, plus one decoy whose kid alternates, so every fetch is a changed
    set that drops a key. Returns the fetch counter (a one-item list)."""
    rsa = next(k for k in json.loads((FIXTURE_KEYS / "jwks.json").read_text())["keys"] if k["kid"] == "rsa-1")
    fetches = [0]

    def key_set():
        fetches[0] += 1
        keys = [dict(rsa, kid=f"key-{i}") for i in range(2, JWKS_KEYS)]
        keys.append(dict(rsa, kid=f"decoy-{fetches[0] % 2}"))
        return json.dumps({"keys": [rsa, *keys]}).encode()

    serve_json(JWKS_PORT, key_set)
    return fetches


def serve_slow_service():
    """A service on loopback that answers the bench's body after SLOW_SERVICE_SECONDS:
    what a shadow copy meets when the new service is slow."""

    def slow():
        time.sleep(SLOW_SERVICE_SECONDS)
        return b'{"id":42,"name":"ada"}'

    serve_json(SLOW_SERVICE_PORT, slow, http11=True)


def run_wrk(port, duration, connections, headers=(), path=PATH):
    header_args = [arg for header in headers for arg in ("-H", header)]
    scheme = "https" if port in TLS_PORTS.values() else "http"
    out = subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *header_args,
                          f"{scheme}://127.0.0.1:{port}{path}"]),
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"port {port}: {errors.group(1)} non-2xx responses\n{out}")
    return {"rps": rps, "requests": requests, "p50": to_ms(*p50.groups()), "p99": to_ms(*p99.groups())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--high-connections", type=int, default=1000,
                        help="connections of the high-concurrency pair of rows (0: leave them out)")
    parser.add_argument("--rows", help="measure only these comma-separated rows (a name, or a prefix "
                        "ending in '*'; a comma followed by a space is part of a name, as in "
                        "'gateway, JWT*'; nginx's plain row is always kept)")
    parser.add_argument("--perf", action="store_true", help="profile the gateway's last round with perf")
    parser.add_argument("--baseline", type=Path, help="another gateway binary to measure beside this one (A/B)")
    args = parser.parse_args()
    # wrk holds one socket per connection: lift the soft open-files limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not args.baseline:
        del PORTS["gateway-baseline"]
    if args.perf:
        need("perf", "linux-perf")

    # This script's own threads (the JWKS and slow-service servers) stay off the proxy's CPU.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    need("nginx", "nginx-light")
    need("haproxy", "haproxy")
    need("wrk", "wrk")
    need("taskset", "util-linux")
    subprocess.run(["cargo", "build", "--release", "-p", "gateway", "--quiet"], cwd=ROOT, check=True)
    gateway_bin = ROOT / "target" / "release" / "gateway"

    work = tempfile.mkdtemp(prefix="gateway-bench-")
    for name in ("upstream", "nginx"):
        os.makedirs(f"{work}/tmp-{name}", exist_ok=True)
    procs = {}
    try:
        procs["upstream"] = start_nginx(work, "upstream", f"""
  server {{
    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;
    listen 127.0.0.1:{UPSTREAM_H2_PORT} http2;
    listen 127.0.0.1:{UPSTREAM_EXTRA_PORTS[0]} backlog=4096;
    listen 127.0.0.1:{UPSTREAM_EXTRA_PORTS[1]} backlog=4096;
    location / {{ default_type application/json; return 200 '{{"id":42,"name":"ada"}}'; }}
  }}""", LOAD_CPU)
        proxy_location = """
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-ID $request_id;"""
        three = "".join(f" server 127.0.0.1:{port};" for port in (UPSTREAM_PORT, *UPSTREAM_EXTRA_PORTS))
        procs["nginx"] = start_nginx(work, "nginx", f"""
  upstream backend {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}
  upstream backend3 {{ least_conn;{three} keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-log']} backlog=4096;
    access_log {work}/nginx-access.log;
    location / {{
      proxy_pass http://backend;{proxy_location}
    }}
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-3']} backlog=4096;
    location / {{
      proxy_pass http://backend3;{proxy_location}
    }}
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} backlog=4096;
    listen 127.0.0.1:{TLS_PORTS['nginx']} ssl backlog=4096;
    ssl_certificate {TLS_CERT};
    ssl_certificate_key {TLS_KEY};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://backend;{proxy_location}
    }}
  }}""", PROXY_CPU)
        haproxy_cfg = Path(work) / "haproxy.cfg"
        haproxy_cfg.write_text(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']}
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
  unique-id-header X-Request-ID
  default_backend be
backend be
  server up 127.0.0.1:{UPSTREAM_PORT}
""")
        procs["haproxy"] = subprocess.Popen(pinned(PROXY_CPU, ["haproxy", "-f", str(haproxy_cfg)]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        def gateway_config(name, auth):
            return f"""
[server]
listen = "127.0.0.1:{PORTS[name]}"
admin_listen = "127.0.0.1:{GATEWAY_ADMIN_PORTS[name]}"
default_upstream = "monolith"
workers = 1
access_log = false

[upstreams.monolith]
url = "http://127.0.0.1:{UPSTREAM_PORT}"
[upstreams.users]
url = "http://127.0.0.1:{UPSTREAM_PORT}"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"

[[aggregates]]
name = "dashboard"
path = "/api/dashboard"
auth = "off"
timeout_ms = 2000
parts = [
  {{ name = "user", upstream = "users", path = "/api/users/42" }},
  {{ name = "orders", upstream = "monolith", path = "/api/orders/7" }},
  {{ name = "profile", route = "users", path = "/api/profile/42" }},
]
{auth}"""

        jwt_auth = f"""
[auth]
algorithms = ["RS256"]
jwks_file = "{FIXTURE_KEYS / 'jwks.json'}"
issuer = "https://auth.bench.local"
audience = "api"
claims_to_headers = {{ sub = "x-user-id", email = "x-user-email" }}
"""
        jwks_fetches = serve_rotating_jwks()
        jwks_auth = f"""
[auth]
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:{JWKS_PORT}/jwks.json"
jwks_refresh_seconds = 1
issuer = "https://auth.bench.local"
audience = "api"
claims_to_headers = {{ sub = "x-user-id", email = "x-user-email" }}
"""
        gateways = [("gateway", "", gateway_bin), ("gateway-jwt", jwt_auth, gateway_bin),
                    ("gateway-jwks", jwks_auth, gateway_bin),
                    ("gateway-h2", "", gateway_bin), ("gateway-3", "", gateway_bin),
                    ("gateway-log", "", gateway_bin), ("gateway-hc", "", gateway_bin),
                    ("gateway-mono", "", gateway_bin), ("gateway-shadow", "", gateway_bin),
                    ("gateway-shadow-slow", "", gateway_bin),
                    *((name, "", gateway_bin) for name in TRACE_ROWS)]
        serve_slow_service()
        if args.baseline:
            gateways.append(("gateway-baseline", "", args.baseline.resolve()))
        for name, auth, binary in gateways:
            cfg = Path(work) / f"{name}.toml"
            text = gateway_config(name, auth)
            if name == "gateway":
                text = text.replace("access_log = false", f'access_log = false\ntls_listen = "127.0.0.1:{TLS_PORTS["gateway"]}"')
                text = text.replace("\n[upstreams.monolith]", f'\n[server.tls]\ncertificates = [{{ cert_file = "{TLS_CERT}", '
                                    f'key_file = "{TLS_KEY}" }}]\n\n[upstreams.monolith]')
            if name == "gateway-h2":
                text = text.replace(f'url = "http://127.0.0.1:{UPSTREAM_PORT}"',
                                    f'url = "http://127.0.0.1:{UPSTREAM_H2_PORT}"\nprotocol = "http2"')
            if name == "gateway-3":
                urls = ", ".join(f'"http://127.0.0.1:{port}"' for port in (UPSTREAM_PORT, *UPSTREAM_EXTRA_PORTS))
                text = text.replace(f'[upstreams.users]\nurl = "http://127.0.0.1:{UPSTREAM_PORT}"',
                                    f'[upstreams.users]\nendpoints = [{urls}]\nbalance = "least_request"')
            if name in ("gateway-mono", "gateway-shadow", "gateway-shadow-slow"):
                # The monolith answers the route; the shadow rows copy 10% to the service.
                shadow = {"gateway-mono": "", "gateway-shadow": "\nshadow = { percent = 10.0 }",
                          "gateway-shadow-slow": "\nshadow = { percent = 10.0 }"}[name]
                text = text.replace('service = "users"\n', f'service = "users"\nrollout_percent = 0{shadow}\n', 1)
            if name == "gateway-shadow-slow":
                text = text.replace(f'[upstreams.users]\nurl = "http://127.0.0.1:{UPSTREAM_PORT}"',
                                    f'[upstreams.users]\nurl = "http://127.0.0.1:{SLOW_SERVICE_PORT}"\ntimeout_ms = 1000')
            if name in TRACE_ROWS:
                text += (f'\n[telemetry]\notlp_endpoint = "http://127.0.0.1:{UPSTREAM_PORT}"\n'
                         f'trace_sample_percent = {TRACE_ROWS[name]}\n')
            log = subprocess.DEVNULL
            if name == "gateway-log":
                text = text.replace("access_log = false", "access_log = true")
                log = open(Path(work) / "gateway-access.log", "wb")  # noqa: SIM115 (closed with the process)
            cfg.write_text(text)
            procs[name] = subprocess.Popen(pinned(PROXY_CPU, [str(binary), "run", "--config", str(cfg)]),
                                           stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        token = subprocess.run(
            [str(gateway_bin), "token", "--key", str(FIXTURE_KEYS / "rsa-private.pem"), "--alg", "RS256",
             "--kid", "rsa-1", "--sub", "alice", "--iss", "https://auth.bench.local", "--aud", "api",
             "--claim", "email=alice@company.com", "--ttl", "86400"],
            capture_output=True, text=True, check=True).stdout.strip()
        jwt_headers = (f"Authorization: Bearer {token}",)
        wait_port(UPSTREAM_PORT)
        for port in [*PORTS.values(), *TLS_PORTS.values()]:
            wait_port(port)

        targets = [("direct", UPSTREAM_PORT, None, ()), ("nginx", PORTS["nginx"], procs["nginx"].pid, ()),
                   ("haproxy", PORTS["haproxy"], procs["haproxy"].pid, ()),
                   ("gateway", PORTS["gateway"], procs["gateway"].pid, ())]
        if args.baseline:
            targets.append(("gateway (baseline)", PORTS["gateway-baseline"], procs["gateway-baseline"].pid, ()))
        targets.append(("gateway, JWT RS256 (cached)", PORTS["gateway-jwt"], procs["gateway-jwt"].pid, jwt_headers))
        targets.append(("gateway, JWT RS256 (cached), 50-key jwks_url refreshed every 1 s", PORTS["gateway-jwks"],
                        procs["gateway-jwks"].pid, jwt_headers))
        targets.append(("gateway, h2c upstream", PORTS["gateway-h2"], procs["gateway-h2"].pid, ()))
        targets.append(("nginx, 3 endpoints (least_conn)", PORTS["nginx-3"], procs["nginx"].pid, ()))
        targets.append(("gateway, 3 endpoints (least_request)", PORTS["gateway-3"], procs["gateway-3"].pid, ()))
        for name, percent in TRACE_ROWS.items():
            targets.append((f"gateway, tracing {percent}%", PORTS[name], procs[name].pid, ()))
        targets.append(("gateway, monolith side (dial 0)", PORTS["gateway-mono"], procs["gateway-mono"].pid, ()))
        targets.append(("gateway, monolith side, shadow 10% to the service", PORTS["gateway-shadow"],
                        procs["gateway-shadow"].pid, ()))
        targets.append((f"gateway, monolith side, shadow 10% to a service taking {SLOW_SERVICE_SECONDS * 1000:.0f} ms",
                        PORTS["gateway-shadow-slow"], procs["gateway-shadow-slow"].pid, ()))
        targets.append(("nginx, access log to a file", PORTS["nginx-log"], procs["nginx"].pid, ()))
        targets.append(("gateway, access log to a file", PORTS["gateway-log"], procs["gateway-log"].pid, ()))
        connections = {}
        if args.high_connections:
            # The gateway's own process, so the thousand connections leave nothing behind
            # in the one the plain row (and its A/B) measures.
            for proxy, port in (("nginx", "nginx"), ("gateway", "gateway-hc")):
                name = f"{proxy}, {args.high_connections} connections"
                targets.append((name, PORTS[port], procs[port].pid, ()))
                connections[name] = args.high_connections
        targets.append(("nginx, HTTPS", TLS_PORTS["nginx"], procs["nginx"].pid, ()))
        targets.append(("gateway, HTTPS", TLS_PORTS["gateway"], procs["gateway"].pid, ()))
        close = ("Connection: close",)
        targets.append(("nginx, new TLS connections", TLS_PORTS["nginx"], procs["nginx"].pid, close))
        targets.append(("gateway, new TLS connections", TLS_PORTS["gateway"], procs["gateway"].pid, close))
        if args.rows:
            wanted = [w.strip() for w in re.split(r",(?! )", args.rows)]
            targets = [t for t in targets if t[0] == "nginx" or any(
                t[0] == w or (w.endswith("*") and t[0].startswith(w[:-1])) for w in wanted)]
        for name, port, _, headers in targets:  # warm pools and caches
            run_wrk(port, 2, connections.get(name, args.connections), headers)
        results = {name: [] for name, _, _, _ in targets}
        for round_no in range(1, args.rounds + 1):
            ordered = list(targets)
            if args.baseline and round_no % 2 == 0:
                # A and B swap places every other round, so going second is not one side's lot.
                a = next(i for i, t in enumerate(ordered) if t[0] == "gateway")
                b = next(i for i, t in enumerate(ordered) if t[0] == "gateway (baseline)")
                ordered[a], ordered[b] = ordered[b], ordered[a]
            for name, port, pid, headers in ordered:
                before = cpu_ticks(pid) if pid else 0
                profiler = None
                if args.perf and name == "gateway" and round_no == args.rounds:
                    profiler = subprocess.Popen(
                        ["perf", "record", "-F", "999", "-g", "-o", str(ROOT / "bench" / "perf.data"), "-p", str(pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = run_wrk(port, args.duration, connections.get(name, args.connections), headers)
                if profiler:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(timeout=30)
                if pid:
                    r["cpu_us"] = (cpu_ticks(pid) - before) / CLK_TCK * 1e6 / r["requests"]
                    r["rss"] = rss_mib(pid)
                results[name].append(r)
                cpu = f"{r['cpu_us']:.1f} us/req  rss {r['rss']:.1f} MiB" if pid else "-"
                print(f"round {round_no} {name:36} {r['rps']:>10.0f} req/s  p50 {r['p50']:.3f} ms  "
                      f"p99 {r['p99']:.3f} ms  cpu {cpu}", file=sys.stderr)

        nginx_rps = statistics.median(r["rps"] for r in results["nginx"])
        print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, "
              f"GET {PATH}, proxy pinned to CPU {PROXY_CPU}, wrk + upstream on CPU {LOAD_CPU}\n")
        nginx_cpu = statistics.median(r["cpu_us"] for r in results["nginx"])
        print("| target | requests/s median (min-max) | p50 ms | p99 ms | proxy CPU us/request | CPU vs nginx | "
              "vs nginx req/s | RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for name, _, pid, _ in targets:
            rs = results[name]
            rps = [r["rps"] for r in rs]
            med = statistics.median(rps)
            cpu_med = statistics.median(r["cpu_us"] for r in rs) if pid else None
            cpu = f"{cpu_med:.1f}" if pid else "-"
            cpu_ratio = f"{cpu_med / nginx_cpu:.2f}x" if pid else "-"
            rss = f"{max(r['rss'] for r in rs):.1f}" if pid else "-"
            if name in connections:
                name = f"{name} (wrk -c{connections[name]})"
            print(f"| {name} | {med:,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                  f"{statistics.median(r['p50'] for r in rs):.3f} | {statistics.median(r['p99'] for r in rs):.3f} | "
                  f"{cpu} | {cpu_ratio} | {med / nginx_rps:.2f}x | {rss} |")
        print(f"\n(the {JWKS_KEYS}-key JWKS server answered {jwks_fetches[0]} fetches during the run)")
        for percent in TRACE_ROWS.values():
            traced = f"gateway, tracing {percent}%"
            if traced in results and "gateway" in results:
                deltas = [a["cpu_us"] - b["cpu_us"] for a, b in zip(results[traced], results["gateway"])]
                print(f"\ntracing {percent}% minus tracing off, proxy CPU per request, per round: "
                      f"{' '.join(f'{d:+.2f}' for d in deltas)} us; median {statistics.median(deltas):+.2f} us")
        mono, shadowed = "gateway, monolith side (dial 0)", "gateway, monolith side, shadow 10% to the service"
        if mono in results and shadowed in results:
            deltas = [a["cpu_us"] - b["cpu_us"] for a, b in zip(results[shadowed], results[mono])]
            print(f"\nshadow 10% minus no shadow, proxy CPU per request, per round: "
                  f"{' '.join(f'{d:+.1f}' for d in deltas)} us; median {statistics.median(deltas):+.1f} us "
                  f"(copies' own exchanges included)")
            for name in ("gateway-shadow", "gateway-shadow-slow"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{GATEWAY_ADMIN_PORTS[name]}/admin/migration",
                                                timeout=5) as answer:
                        found = json.load(answer)["routes"][0]["shadow"]
                    print(f"{name}: compared {found['compared']}, matched {found['matched']}, "
                          f"errors {found['errors']}, dropped {found['dropped']}, service p99 {found['service_p99_ms']} ms")
                except (OSError, KeyError, ValueError) as e:
                    print(f"{name}: no shadow report ({e})")
        if args.baseline:
            deltas = [a["cpu_us"] - b["cpu_us"] for a, b in zip(results["gateway"], results["gateway (baseline)"])]
            print(f"\nA/B, proxy CPU per request, gateway minus baseline, per round: "
                  f"{' '.join(f'{d:+.1f}' for d in deltas)} us; median {statistics.median(deltas):+.1f} us")
        # The aggregate at low concurrency: its latency against one part's.
        print(f"\nAggregate of 3 parts, wrk -t1 -c{AGGREGATE_CONNECTIONS} -d{args.duration}s, {args.rounds} interleaved rounds:\n")
        agg = {"one part, direct": [], "aggregate of 3 parts (gateway)": []}
        for _ in range(args.rounds):
            agg["one part, direct"].append(run_wrk(UPSTREAM_PORT, args.duration, AGGREGATE_CONNECTIONS))
            agg["aggregate of 3 parts (gateway)"].append(
                run_wrk(PORTS["gateway"], args.duration, AGGREGATE_CONNECTIONS, path="/api/dashboard"))
        part_p50 = statistics.median(r["p50"] for r in agg["one part, direct"])
        print("| target | requests/s median | p50 ms | p99 ms | p50 over one part |")
        print("|---|---|---|---|---|")
        for name, rs in agg.items():
            p50 = statistics.median(r["p50"] for r in rs)
            print(f"| {name} | {statistics.median(r['rps'] for r in rs):,.0f} | {p50:.3f} | "
                  f"{statistics.median(r['p99'] for r in rs):.3f} | +{p50 - part_p50:.3f} ms |")
        if args.perf:
            report = subprocess.run(
                ["perf", "report", "-i", str(ROOT / "bench" / "perf.data"), "--no-children", "--stdio",
                 "--percent-limit", "0.7"], capture_output=True, text=True).stdout
            print("\nHottest symbols in the gateway (perf, last round):")
            print("\n".join(line for line in report.splitlines() if line.strip() and not line.startswith("#"))[:6000])
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
