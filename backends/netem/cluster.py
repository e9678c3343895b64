"""Build and tear down an emulated cluster: namespaces, bridges, shaped veths.

Everything a run creates is written to a state file *before* it is created, so
``down`` can remove what a crashed run left behind. Teardown runs from the
context manager, from SIGINT/SIGTERM handlers and at exit; it kills whatever is
still running inside our namespaces (processes we launched there) and deletes
the namespaces, which takes their veths and bridges with them.

Isolation (several clusters, several users of this machine at once):

* a run's prefix is claimed before anything is built: no namespace may start with it and
  its state file is created with O_EXCL, so two runs never share a prefix;
* a run removes only the namespaces it created itself (``ip netns add`` succeeded), never
  "whatever starts with my prefix";
* every namespace carries its owner on its loopback's alias (``parsim owner=PID:START
  state=FILE``), so a namespace whose state file is elsewhere (another PARSIM_NETEM_STATE_DIR)
  is still known to be someone's; ``down`` without a prefix removes only clusters whose owner
  process is gone, and never a namespace whose owner it cannot establish (``down --all`` does).

Shaping: tbf on the egress of each veth end, i.e. each direction of a link has
its own token bucket at the link rate. Where the kernel has sch_netem, a netem
child adds the link's one-way latency; this is detected once per process.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx

from backends.netem.plan import HOST_IF, PREFIX_RE, SUBNET, NetPlan, graph_of, new_prefix, plan_from_graph, rank_table
from parsim.errors import ParsimError

# Token bucket: the burst must hold at least a couple of 64 KiB GSO segments and
# a millisecond of line rate (tbf cannot shape finer than its timer). The queue
# holds 5 ms of line rate: a deep FIFO delays the ACKs of the opposite direction
# behind data (two-way traffic, Zhang, Shenker & Clark 1991).
TBF_MIN_BURST_B = 128 * 1024
TBF_BURST_S = 1e-3
TBF_QUEUE_S = 5e-3
# TCP congestion control inside the emulated hosts. The host default here is BBR,
# which measured pathological on a connection carrying bulk data both ways through
# these shaped queues (16 MiB each way at 200 Mbit/s: 2.6 s vs 0.74 s with reno).
TCP_CC = "reno"


def state_dir() -> Path:
    d = Path(os.environ.get("PARSIM_NETEM_STATE_DIR") or "/run/parsim-netem")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path("/tmp/parsim-netem")
        d.mkdir(parents=True, exist_ok=True)
    return d


def _run(argv, check=True, timeout=20):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise ParsimError(f"`{' '.join(argv)}` failed (exit {p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


_UNAVAILABLE: list = []  # cached reason ('' when available)


def unavailable() -> str:
    """Why namespaces cannot be built here ('' when they can): root, ip, tc, and a trial namespace."""
    if _UNAVAILABLE:
        return _UNAVAILABLE[0]
    reason = ""
    if os.geteuid() != 0:
        reason = "netem needs root (network namespaces and tc); run as root"
    elif not shutil.which("ip") or not shutil.which("tc"):
        reason = "netem needs iproute2 (`ip` and `tc`); install it, e.g. apt-get install -y iproute2"
    else:
        ns = new_prefix() + "trial"
        p = _run(["ip", "netns", "add", ns], check=False)
        if p.returncode != 0:
            reason = f"cannot create a network namespace here: {p.stderr.strip()}"
        else:
            _run(["ip", "netns", "del", ns], check=False)
    _UNAVAILABLE.append(reason)
    return reason


_NETEM: list = []


def has_netem(ns: str) -> bool:
    """Trial netem qdisc on a namespace's loopback (once per process); says so once when absent."""
    if not _NETEM:
        p = _run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"], check=False)
        ok = p.returncode == 0
        if ok:
            _run(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"], check=False)
        else:
            print("parsim emulate: this kernel has no sch_netem; links are shaped in bandwidth only "
                  "(latency and loss are not emulated; the model takes latency from the measured round trip)",
                  file=sys.stderr)
        _NETEM.append(ok)
    return _NETEM[0]


def shape(ns: str, dev: str, rate_Bps: float, latency_s: float = 0.0, netem: bool = False) -> list:
    """tc commands shaping one device's egress to rate_Bps (a drop-tail tbf port),
    with a netem child adding latency_s where the kernel has sch_netem."""
    burst = max(TBF_MIN_BURST_B, int(rate_Bps * TBF_BURST_S))
    limit = burst + int(rate_Bps * TBF_QUEUE_S)
    tc = ["tc", "-n", ns]
    cmds = [tc + ["qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf",
                  "rate", f"{int(rate_Bps * 8)}bit", "burst", str(burst), "limit", str(limit)]]
    if netem and latency_s > 0:
        cmds.append(tc + ["qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:",
                          "netem", "delay", f"{latency_s * 1e6:.0f}us"])
    return cmds


from backends.procs import proc_start as _proc_start  # noqa: E402  (one reader of /proc/PID/stat's start time)


def _owner_alive(state: dict) -> bool:
    return _proc_start(state["owner_pid"]) == state.get("owner_start")


def list_namespaces() -> list:
    p = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _kill_ns_processes(ns: str, grace_s: float = 2.0) -> None:
    """End processes we launched inside one of our namespaces (by pid, TERM then KILL)."""
    pids = [int(x) for x in _run(["ip", "netns", "pids", ns], check=False).stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _proc_start(p) is not None and not _is_zombie(p)]
            time.sleep(0.05)
        if not pids:
            return


def _is_zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def delete_namespaces(names) -> list:
    """Kill what runs inside and delete each namespace of ours; returns those deleted."""
    gone = []
    for ns in names:
        assert PREFIX_RE.match(ns), ns  # never touch a namespace that is not ours
        _kill_ns_processes(ns)
        if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
            gone.append(ns)
    return gone


OWNER_ALIAS = "parsim owner="


def ns_owner(ns: str):
    """(pid, start, state file) from a namespace's loopback alias, or None (not set / unreadable)."""
    p = _run(["ip", "-n", ns, "-o", "link", "show", "lo"], check=False)
    text = p.stdout
    i = text.find(OWNER_ALIAS)
    if p.returncode != 0 or i < 0:
        return None
    fields = dict(kv.split("=", 1) for kv in text[i:].split("\\")[0].split() if "=" in kv)
    try:
        pid, start = fields["owner"].split(":", 1)
        return int(pid), start, fields.get("state", "")
    except (KeyError, ValueError):
        return None


def _owner_gone(owner) -> bool:
    pid, start, _ = owner
    return _proc_start(pid) != start


def read_states() -> list:
    out = []
    for f in sorted(state_dir().glob("ps*.json")):
        try:
            out.append(json.loads(f.read_text()) | {"_file": str(f)})
        except (OSError, ValueError):
            continue
    return out


def down(all_runs: bool = False, prefix: str | None = None) -> list:
    """Remove emulated clusters whose owner process is gone: clusters brought `up` (their `up`
    process has exited) and runs that crashed or were killed; with `prefix`, that cluster
    whatever its owner; with all_runs, every cluster and every namespace of ours.

    A namespace no state file here claims is removed only when its loopback alias names an owner
    that is gone and whose state file (possibly in another state directory) is absent or not a
    cluster that was brought `up`; one without an owner alias only with all_runs.
    Returns the namespaces deleted."""
    existing = [n for n in list_namespaces() if PREFIX_RE.match(n)]
    claimed, removed = set(), []
    for st in read_states():
        mine = _created_by(st, existing)
        wanted = (prefix == st["prefix"]) if prefix else (all_runs or not _owner_alive(st))
        if wanted:
            removed += delete_namespaces(mine)
            # keep the state while a namespace it planned exists and nobody's alias says whose it is:
            # dropping it would leave that namespace with no record at all
            unknown = [n for n in st.get("namespaces") or [] if n in existing and n not in removed
                       and ns_owner(n) is None]
            if not unknown:
                Path(st["_file"]).unlink(missing_ok=True)
        claimed.update(mine)
    if prefix:
        return removed
    for n in existing:
        if n in claimed:
            continue
        owner = ns_owner(n)
        if all_runs or (owner is not None and _owner_gone(owner) and not _kept_elsewhere(owner[2])):
            removed += delete_namespaces([n])
    return removed


def _created_by(st: dict, existing) -> list:
    """The namespaces a state's run created: recorded as created, or planned and carrying its owner's
    alias. A planned name that someone else had already taken is neither, and is left alone."""
    made = set(st.get("created_namespaces") or [])
    legacy = "created_namespaces" not in st   # written before owners were recorded: no aliases either
    out = []
    for n in st.get("namespaces") or []:
        if n not in existing:
            continue
        if n in made:
            out.append(n)
            continue
        owner = ns_owner(n)
        if owner is None and legacy or \
                owner is not None and owner[0] == st.get("owner_pid") and owner[1] == st.get("owner_start"):
            out.append(n)
    return out


def _kept_elsewhere(state_file: str) -> bool:
    """A state file in another state directory that says its cluster was brought `up` (kept)."""
    try:
        return bool(json.loads(Path(state_file).read_text()).get("persistent")) if state_file else False
    except (OSError, ValueError):
        return False


def leftovers() -> list:
    """Clusters (state files here) whose owner is gone and that were not brought `up`: what a
    killed `emulate run` or test left behind. [(prefix, namespaces that still exist)]."""
    have = set(list_namespaces())
    return [(st["prefix"], [n for n in st.get("namespaces") or [] if n in have])
            for st in read_states() if not st.get("persistent") and not _owner_alive(st)]


def orphan_namespaces() -> list:
    """Our namespaces (PREFIX_RE) that no state file lists and whose owner (their loopback alias, ns_owner) is gone:
    what an interrupted teardown left without its state (trial 2026-11-30: Ctrl-C during link probing left three
    namespaces that the next `up` did not remove)."""
    listed = {n for st in read_states() for n in (st.get("namespaces") or [])}
    out = []
    for ns in list_namespaces():
        if not PREFIX_RE.match(ns) or ns in listed:
            continue
        owner = ns_owner(ns)      # as `down`: only a namespace whose alias names an owner that is gone
        if owner is None or _owner_alive({"owner_pid": owner[0], "owner_start": owner[1]}):
            continue
        out.append(ns)
    return out


def reap_leftovers() -> list:
    """Remove what killed runs left behind (see leftovers, orphan_namespaces); returns the namespaces deleted."""
    gone = []
    for pfx, _ in leftovers():
        gone += down(prefix=pfx)
    return gone + delete_namespaces(orphan_namespaces())


def claim_prefix(tries: int = 64) -> str:
    """A fresh prefix no namespace uses, claimed by creating its state file with O_EXCL."""
    d = state_dir()
    have = list_namespaces()
    for _ in range(tries):
        pfx = new_prefix()
        if any(n.startswith(pfx) for n in have):
            continue
        try:
            fd = os.open(d / f"{pfx}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:   # a state like any other: `down` removes it once its owner is gone
            json.dump({"prefix": pfx, "owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
                       "persistent": False, "namespaces": [], "hosts": [], "created": time.time()}, f)
        return pfx
    raise ParsimError(f"could not find a free emulated-cluster prefix in {tries} tries "
                      f"({len(have)} namespaces exist); `parsim emulate status` lists them")


class Emulation:
    """An emulated cluster for the life of a `with` block (or until `down`)."""

    def __init__(self, cluster, prefix: str | None = None, persistent: bool = False,
                 ranks_per_host: int | None = None):
        self.graph = graph_of(cluster)
        self.plan: NetPlan = plan_from_graph(self.graph, prefix or "ps00000-")   # checks the graph first
        self._claimed = prefix is None     # the state file is ours to remove only if we claimed the prefix
        if prefix is None:
            prefix = claim_prefix()
            self.plan = plan_from_graph(self.graph, prefix)
        self.prefix = prefix
        self._created: list = []           # namespaces this object created (and only those it removes)
        self.persistent = persistent
        self.ranks_per_host = ranks_per_host
        self.netem = False
        self.probes: list = []
        self.state_file = state_dir() / f"{self.prefix}.json"
        self._old_handlers: dict = {}
        self._up = False

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self):
        self._install_handlers()
        try:
            return self.up()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, *exc):
        self.teardown()
        return False

    def up(self) -> "Emulation":
        reason = unavailable()
        if reason:
            raise ParsimError(reason)
        if not self._claimed:   # a prefix given by the caller: never take over someone else's cluster
            taken = [n for n in list_namespaces() if n.startswith(self.prefix)]
            if taken or self.state_file.exists():
                raise ParsimError(f"emulated-cluster prefix {self.prefix} is in use ({len(taken)} namespace(s), "
                                  f"state file {'present' if self.state_file.exists() else 'absent'}): "
                                  "not building over it; give no prefix to get a fresh one")
        self._up = True
        self.write_state()  # before anything exists, so a crash is always cleanable
        p = self.plan
        alias = f"{OWNER_ALIAS}{os.getpid()}:{_proc_start(os.getpid())} state={self.state_file}"
        for ns in p.namespaces:
            _run(["ip", "netns", "add", ns])   # fails if the name exists: then it is not ours to remove
            self._created.append(ns)
            _run(["ip", "-n", ns, "link", "set", "dev", "lo", "alias", alias], check=False)
            self.write_state()
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={TCP_CC}"])
        self.netem = has_netem(p.hosts[0].ns)
        for s in p.switches:
            _run(["ip", "-n", s.ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])
            _run(["ip", "-n", s.ns, "link", "set", "br0", "up"])
        switch_ns = {s.ns for s in p.switches}
        for v in p.veths:
            _run(["ip", "-n", v.a_ns, "link", "add", v.a_if, "type", "veth", "peer", "name", v.b_if, "netns", v.b_ns])
            for ns, dev in ((v.a_ns, v.a_if), (v.b_ns, v.b_if)):
                if ns in switch_ns:
                    _run(["ip", "-n", ns, "link", "set", dev, "master", "br0"])
                _run(["ip", "-n", ns, "link", "set", dev, "up"])
                for cmd in shape(ns, dev, v.bandwidth_Bps, v.latency_s, self.netem):
                    _run(cmd)
        for h in p.hosts:
            if any(v.a_ns == h.ns for v in p.veths):
                _run(["ip", "-n", h.ns, "addr", "add", f"{h.address}/{SUBNET.prefixlen}", "dev", HOST_IF])
        self.write_state()
        return self

    def teardown(self) -> None:
        """Remove what this object created, and nothing else: its namespaces (with their veths and
        bridges) and, when it claimed the prefix, its state file."""
        left = []
        if self._up:
            self._up = False
            have = set(list_namespaces())
            delete_namespaces([n for n in self._created if n in have])
            mine = set(self._created)
            left = [n for n in list_namespaces() if n in mine]
            self._created = left
        if self._claimed and not left:
            self._claimed = False
            self.state_file.unlink(missing_ok=True)
        elif left:      # keep the state naming what is still there: the next up/run (leftovers) removes it
            try:
                self.write_state()
            except OSError:
                pass
        self._restore_handlers()

    def _install_handlers(self):
        atexit.register(self.teardown)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: rely on the context manager
                pass

    def _restore_handlers(self):
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}

    def _on_signal(self, signum, frame):
        old = self._old_handlers.get(signum)
        self.teardown()
        if callable(old):
            old(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    # -- state ---------------------------------------------------------------
    def state(self) -> dict:
        return {
            "prefix": self.prefix, "owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
            "persistent": self.persistent, "created": time.time(), "netem": self.netem, "tcp_cc": TCP_CC,
            "namespaces": self.plan.namespaces, "created_namespaces": list(self._created),
            "dropped_links": list(self.plan.dropped),
            "hosts": [{"node": str(h.node), "ns": h.ns, "address": h.address, "ranks": [str(r) for r in h.ranks]}
                      for h in self.plan.hosts],
            "ranks_per_host": self.ranks_per_host,
            "graph": nx.node_link_data(self.graph, edges="links"),
            "probes": self.probes,
        }

    def write_state(self) -> None:
        from parsim.outputs import write_atomic
        write_atomic(self.state_file, json.dumps(self.state(), default=str), what="emulated cluster state")

    # -- running things inside ----------------------------------------------
    def ranks(self) -> list:
        return rank_table(self.plan, self.ranks_per_host)

    def exec_argv(self, ns: str, argv, env: dict | None = None) -> list:
        pre = ["ip", "netns", "exec", ns]
        if env:
            pre += ["env", *(f"{k}={v}" for k, v in env.items())]
        return pre + list(argv)
