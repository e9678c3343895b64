"""Link probes: raw TCP throughput and round trip between two emulated hosts.

Run as ``python -m backends.netem.probe serve ADDR PORT`` in one namespace and
``python -m backends.netem.probe client ADDR PORT --bytes N`` in another; the
client prints one JSON line. The throughput is the receiver's goodput: bytes
over the time from its first to its last byte (the shaper's token bucket lets
the first burst through at line rate, so a probe should be many bursts long).
The round trip is the median of small TCP_NODELAY ping-pongs. Every loop is
bounded in count and in time.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

import networkx as nx

from parsim.errors import ParsimError

CHUNK = 256 * 1024
PINGS = 21


def _recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise ConnectionError("peer closed")
        buf += b
    return bytes(buf)


def serve(addr: str, port: int, timeout_s: float) -> None:
    """Accept one client: answer pings, then sink a bulk transfer and report its timing."""
    with socket.create_server((addr, port), reuse_port=False) as srv:
        srv.settimeout(timeout_s)
        print("ready", flush=True)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(timeout_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            header = json.loads(_recv_exact(conn, 64).rstrip(b" "))
            for _ in range(header["pings"]):
                conn.sendall(_recv_exact(conn, 1))
            total, got, t0 = header["bytes"], 0, None
            while got < total:
                b = conn.recv(min(CHUNK, total - got))
                if not b:
                    break
                if t0 is None:
                    t0 = time.perf_counter()
                    first = len(b)
                got += len(b)
            t1 = time.perf_counter()
            # goodput over the bytes after the first read (that read started the clock)
            rate = (got - first) / (t1 - t0) if t0 and t1 > t0 else 0.0
            conn.sendall(json.dumps({"bytes": got, "time_s": t1 - t0, "rate_Bps": rate}).encode().ljust(128))


def client(addr: str, port: int, nbytes: int, timeout_s: float, pings: int = PINGS) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:  # the server may still be starting: bounded retries
        try:
            s = socket.create_connection((addr, port), timeout=timeout_s)
            break
        except (ConnectionRefusedError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(json.dumps({"bytes": nbytes, "pings": pings}).encode().ljust(64))
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            s.sendall(b"x")
            _recv_exact(s, 1)
            rtts.append(time.perf_counter() - t)
        payload = memoryview(b"\0" * CHUNK)
        sent = 0
        while sent < nbytes:
            n = min(CHUNK, nbytes - sent)
            s.sendall(payload[:n])
            sent += n
        res = json.loads(_recv_exact(s, 128).rstrip(b" "))
    rtts = rtts[1:] or rtts  # the first ping pays connection warm-up
    return {"rate_Bps": res["rate_Bps"], "bytes": res["bytes"], "time_s": res["time_s"],
            "rtt_s": statistics.median(rtts), "rtt_min_s": min(rtts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m backends.netem.probe")
    p.add_argument("role", choices=["serve", "client"])
    p.add_argument("addr")
    p.add_argument("port", type=int)
    p.add_argument("--bytes", type=int, default=8 << 20)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--pings", type=int, default=PINGS, help="client: round trips timed (the first is dropped)")
    a = p.parse_args(argv)
    if a.role == "serve":
        serve(a.addr, a.port, a.timeout)
    else:
        print(json.dumps(client(a.addr, a.port, a.bytes, a.timeout, a.pings)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- orchestration: probes between emulated hosts -----------------------------
PROBE_PORT = 5201  # inside our namespaces only
PROBE_TIME_S = 0.4  # each probe moves about this long at the configured rate


def _path_edges(g, a, b):
    path = nx.shortest_path(g, a, b)
    return list(zip(path, path[1:]))


def probe_pairs(emu, pairs=None, timeout_s: float = 20.0) -> list:
    """TCP probe for each (host_i, host_j) pair (default: a ring over the hosts, so
    every host link is crossed once in each direction), one after another.
    Returns dicts with the configured bottleneck rate beside the measured one."""
    plan, g = emu.plan, emu.graph
    hosts = plan.hosts
    if pairs is None:
        pairs = [(i, (i + 1) % len(hosts)) for i in range(len(hosts))] if len(hosts) > 1 else []
        if len(hosts) == 2:
            pairs = [(0, 1), (1, 0)]
    out = []
    for i, j in pairs:
        a, b = hosts[i], hosts[j]
        edges = _path_edges(g, a.node, b.node)
        configured = min(g.edges[e]["bandwidth"] for e in edges)
        nbytes = int(max(1 << 20, configured * PROBE_TIME_S))
        py = [sys.executable, "-m", "backends.netem.probe"]
        r = serve_and_probe(emu.exec_argv(b.ns, py + ["serve", b.address, str(PROBE_PORT), "--timeout", str(timeout_s)]),
                            emu.exec_argv(a.ns, py + ["client", b.address, str(PROBE_PORT), "--bytes", str(nbytes),
                                                      "--timeout", str(timeout_s)]),
                            timeout_s, f"probe {a.node}->{b.node}")
        out.append({"src": a.node, "dst": b.node, "hops": len(edges),
                    "configured_Bps": configured, "measured_Bps": r["rate_Bps"],
                    "efficiency": r["rate_Bps"] / configured, "rtt_s": r["rtt_s"], "bytes": r["bytes"]})
    return out


def serve_and_probe(server_argv, client_argv, timeout_s: float, what: str) -> dict:
    """Start the probe server (`server_argv`, prints "ready"), run the client against it, reap both
    (through the one launcher, backends.torchdist.launch); the client's JSON result. ParsimError when
    the client fails."""
    import subprocess

    from backends.torchdist.launch import RunFailed, run_process, spawn, stop
    srv = spawn(server_argv, stdout=subprocess.PIPE, text=True)
    try:
        srv.stdout.readline()  # "ready"
        try:
            rc, out, err = run_process(client_argv, timeout_s + 5, what=what)
        except RunFailed as e:
            raise ParsimError(str(e)) from None
        if rc != 0:
            raise ParsimError(f"{what} failed: {(err.strip().splitlines() or ['?'])[-1]}")
        return json.loads(out.strip().splitlines()[-1])
    finally:
        try:
            srv.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        stop([srv])


def measured_graph(g, probes) -> "nx.Graph":
    """Copy of g whose emulated links (plan.network_edges) carry what the probes
    measured: each link's bandwidth times the median efficiency of the probes that
    crossed it (the median over all probes where none did), and a latency of the
    probes' half round trip spread over the emulated links they crossed. Links
    inside a host are left as they are."""
    from backends.netem.plan import network_edges
    g = g.copy()
    if not probes:
        return g
    net = network_edges(g)
    eff, lat, all_eff, all_lat = {}, {}, [], []
    for p in probes:
        crossed = [frozenset(e) for e in _path_edges(g, p["src"], p["dst"]) if frozenset(e) in net]
        one_way = p["rtt_s"] / 2 / max(1, len(crossed))
        all_eff.append(p["efficiency"])
        all_lat.append(one_way)
        for k in crossed:
            eff.setdefault(k, []).append(p["efficiency"])
            lat.setdefault(k, []).append(one_way)
    for u, v, d in g.edges(data=True):
        k = frozenset((u, v))
        if k not in net:
            continue
        d["configured_bandwidth"] = d["bandwidth"]
        d["bandwidth"] = d["bandwidth"] * statistics.median(eff.get(k, all_eff))
        d["latency"] = statistics.median(lat.get(k, all_lat))
    return g
