"""A campaign of malformed invocations and files across every subcommand (issue 11, kinds 1, 2, 4, 6).

    PYTHONPATH=$PWD python -m studies.robustness.hostile_inputs [--tree DIR] [--timeout 15] [--json OUT]

Each case is run in its own process (``parsim.cli.main`` through a small wrapper, under a memory
limit and a timeout) against the source tree ``--tree`` (default: this checkout), and classified:

  hang        killed after --timeout seconds, or out of the memory limit (MemoryError / killed)
  traceback   a Python traceback on stderr
  multi-line  refused (exit 2) with more than one line on stderr
  nonsense    exit 0 on an input that must be refused, or a non-finite number (inf, nan) in the output
  ok          refused with exactly one line (exit 2) where it must be, or exit 0 with finite output

`run` and `emulate` never spawn ranks or touch network namespaces here: the wrapper replaces the
launcher (``backends.torchdist.launch.launch``) and ``emulate``'s ``bring_up`` with a stub that
stops with ``ACCEPTED`` — reaching it means every flag was accepted (nonsense for a bad flag).
Cases marked ``expect="ok"`` are valid edge inputs that must succeed with finite numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEM_LIMIT_BYTES = 3 * 2 ** 30      # address space per case: a hang "at 3.9 GB" is caught here

WRAPPER = r'''
import sys
sys.path.insert(0, sys.argv[1])
argv = sys.argv[2:]
class _Accepted(Exception):
    pass
def _stub(*a, **k):
    raise _Accepted()
if argv and argv[0] == "run":
    import backends.torchdist.launch as L
    L.launch = _stub
if argv and argv[0] == "emulate":
    import parsim.commands.emulate as E
    import backends.netem.cluster as NC
    NC.unavailable = lambda: ""
    E._running_clusters = lambda: []
    def _bring_up(args, persistent):
        E.build_graph(args)
        raise _Accepted()
    E.bring_up = _bring_up
from parsim.cli import main
try:
    rc = main(argv)
except _Accepted:
    print("ACCEPTED", file=sys.stderr)
    rc = 0
sys.exit(rc)
'''


def make_files(d: Path) -> dict:
    """The hostile files, created in `d`; returns {placeholder: path}."""
    f = {}

    def w(name, text, mode="w"):
        p = d / name
        if mode == "wb":
            p.write_bytes(text)
        else:
            p.write_text(text)
        f[name] = str(p)
        return p

    good_model = "layers: 2\nhidden: 128\nheads: 4\nkv_heads: 2\nffn_hidden: 512\nvocab: 1000\nseq_len: 256\n"
    laughs = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
    for i, (x, y) in enumerate(zip("bcdefghi", "abcdefgh")):
        laughs += f"{x}: &{x} [*{y},*{y},*{y},*{y},*{y},*{y},*{y},*{y},*{y}]\n"
    w("laughs_model.yaml", laughs + "name: *i\n" + good_model)
    w("laughs_cluster.yaml", laughs + "name: *i\nbuilder: ring\ndevice: cpu\nlink_GBps: 1\nlink_latency_us: 1\n")
    w("deep_flow.yaml", "[" * 20000 + "]" * 20000 + "\n")
    w("deep_block.yaml", "".join("  " * i + f"k{i}:\n" for i in range(3000)) + "  " * 3000 + "x: 1\n")
    w("deep.json", "[" * 100000 + "]" * 100000)
    w("deep_config.json", '{"a":' * 100000 + "1" + "}" * 100000)
    w("dup_model.yaml", good_model + "layers: 4\n")
    w("dup_model.json", '{"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "ffn_hidden": 512, "vocab": 1000, '
                        '"seq_len": 256, "layers": 8}')
    w("dup_cluster.yaml", "builder: ring\ndevice: cpu\nlink_GBps: 1\nlink_latency_us: 1\nlink_GBps: 1000\n")
    w("bad_utf8.yaml", b"name: \xff\xfe\n" + good_model.encode(), "wb")
    w("big_model.yaml", good_model + "#" + "x" * (40 * 2 ** 20) + "\n")
    w("list_model.yaml", "- 1\n- 2\n")
    dgx = ("builder: dgx\ndevice: h100-sxm\ngpus_per_node: 8\nnvlink_GBps: 450\nnvlink_latency_us: 1\n"
           "nic_GBps: 50\nnic_latency_us: 5\n")
    w("cl_ok.yaml", dgx)
    w("cl_nic_lat_inf.yaml", dgx.replace("nic_latency_us: 5", "nic_latency_us: .inf"))
    w("cl_nic_eff5.yaml", dgx + "nic_efficiency: 5\n")
    w("cl_nic_eff0.yaml", dgx + "nic_efficiency: 0\n")
    w("cl_nic_eff_neg.yaml", dgx + "nic_efficiency: -1\n")
    w("cl_nic_nan.yaml", dgx.replace("nic_GBps: 50", "nic_GBps: .nan"))
    w("cl_nic_neg.yaml", dgx.replace("nic_GBps: 50", "nic_GBps: -5"))
    w("cl_nvlink_1e400.yaml", dgx.replace("nvlink_GBps: 450", "nvlink_GBps: 1e400"))
    w("cl_gpn0.yaml", dgx.replace("gpus_per_node: 8", "gpus_per_node: 0"))
    w("cl_gpn_frac.yaml", dgx.replace("gpus_per_node: 8", "gpus_per_node: 2.5"))
    w("cl_gpn_word.yaml", dgx.replace("gpus_per_node: 8", "gpus_per_node: eight"))
    w("cl_gpn_huge.yaml", dgx.replace("gpus_per_node: 8", "gpus_per_node: 1000000000"))
    w("cl_oversub_nan.yaml", dgx.replace("builder: dgx", "builder: fat_tree") + "oversubscription: .nan\n")
    w("cl_spines0.yaml", dgx.replace("builder: dgx", "builder: fat_tree") + "spines: 0\nnodes_per_leaf: 1\n")
    w("cl_torus_huge.yaml", "builder: torus\ndevice: cpu\ndims: [100000, 100000]\nlink_GBps: 1\nlink_latency_us: 1\n")
    w("cl_torus_4d.yaml", "builder: torus\ndevice: cpu\ndims: [2, 2, 2, 2]\nlink_GBps: 1\nlink_latency_us: 1\n")
    w("cl_ring_huge.yaml", "builder: ring\ndevice: cpu\ndevices: 1000000000\nlink_GBps: 1\nlink_latency_us: 1\n")
    w("cl_full_big.yaml", "builder: full\ndevice: cpu\ndevices: 100000\nlink_GBps: 1\nlink_latency_us: 1\n")
    w("cl_ring_lat_inf.yaml", "builder: ring\ndevice: cpu\ndevices: 8\nlink_GBps: 1\nlink_latency_us: .inf\n")
    w("cl_star_servers_neg.yaml", "builder: star\ndevice: cpu\nlink_GBps: 1\nlink_latency_us: 1\nservers: -3\n")
    graph = ("nodes:\n  - {id: a, kind: device, profile: cpu}\n  - {id: b, kind: device, profile: cpu}\n"
             "links:\n  - {a: a, b: b, bandwidth_GBps: BW, latency_us: LAT, efficiency: EFF}\n")
    w("g_ok.yaml", graph.replace("BW", "10").replace("LAT", "1").replace("EFF", "1"))
    w("g_lat_inf.yaml", graph.replace("BW", "10").replace("LAT", ".inf").replace("EFF", "1"))
    w("g_bw_nan.yaml", graph.replace("BW", ".nan").replace("LAT", "1").replace("EFF", "1"))
    w("g_eff5.yaml", graph.replace("BW", "10").replace("LAT", "1").replace("EFF", "5"))
    w("g_nodes_scalar.yaml", "nodes: 7\nlinks: []\n")
    gml = ('<?xml version="1.0" encoding="UTF-8"?>\n<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n'
           '<key id="k" for="node" attr.name="kind" attr.type="string"/>\n'
           '<key id="p" for="node" attr.name="profile" attr.type="string"/>\n'
           '<key id="b" for="edge" attr.name="bandwidth" attr.type="double"/>\n'
           '<key id="l" for="edge" attr.name="latency" attr.type="double"/>\n'
           '<key id="e" for="edge" attr.name="efficiency" attr.type="double"/>\n'
           '<graph edgedefault="undirected">\n'
           '<node id="a"><data key="k">device</data><data key="p">cpu</data></node>\n'
           '<node id="b"><data key="k">device</data><data key="p">cpu</data></node>\n'
           '<edge source="a" target="b"><data key="b">BW</data><data key="l">LAT</data><data key="e">EFF</data></edge>\n'
           '</graph></graphml>\n')
    w("ok.graphml", gml.replace("BW", "1e9").replace("LAT", "1e-6").replace("EFF", "1"))
    w("lat_inf.graphml", gml.replace("BW", "1e9").replace("LAT", "INF").replace("EFF", "1"))
    w("bw_nan.graphml", gml.replace("BW", "NaN").replace("LAT", "1e-6").replace("EFF", "1"))
    w("eff5.graphml", gml.replace("BW", "1e9").replace("LAT", "1e-6").replace("EFF", "5"))
    ent = '<!DOCTYPE g [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {x} "{("&" + y + ";") * 10}">' for x, y in zip("bcdefghi", "abcdefgh")) + "]>\n"
    w("bomb.graphml", gml.replace('<graphml', ent + '<graphml', 1).replace(">device<", ">&i;<", 1)
      .replace("BW", "1e9").replace("LAT", "1e-6").replace("EFF", "1"))
    w("garbage.graphml", "<graphml><graph><node id=")
    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    f["fifo.yaml"] = str(fifo)
    fifo_j = d / "fifo.json"
    os.mkfifo(fifo_j)
    f["fifo.json"] = str(fifo_j)
    (d / "adir.yaml").mkdir()
    f["adir.yaml"] = str(d / "adir.yaml")
    return f


def cases(f: dict) -> list[tuple[str, str, list, str]]:
    """(kind, id, argv, expect) with expect 'fail' (must be refused) or 'ok'."""
    big, huge = "1000000000", str(2 ** 50)
    P = ["--gpus", "8"]
    c = []

    def add(kind, argv, expect="fail", id_=None):
        c.append((kind, id_ or " ".join(a if len(a) < 40 else a[:12] + "…" for a in argv), argv, expect))

    # controls: valid inputs must pass with finite numbers
    add("control", ["predict", "--gpus", "8", "--model", "gpt3-125m"], "ok")
    add("control", ["plan", "--gpus", "8", "--model", "gpt3-125m", "--top", "3"], "ok")
    add("control", ["simulate", "--pp", "4", "-m", "8"], "ok")
    add("control", ["collective", "--size", "1KiB:1MiB", "--format", "json"], "ok")
    add("control", ["topology", "show", "--cluster", f["cl_ok.yaml"], "--gpus", "16"], "ok")
    add("control", ["topology", "show", "--cluster", f["ok.graphml"]], "ok")
    add("control", ["topology", "show", "--cluster", f["g_ok.yaml"]], "ok")
    # kind 1: unbounded sizes
    for g in (big, huge):
        add("1-size", ["predict", "--gpus", g])
        add("1-size", ["plan", "--gpus", g])
        add("1-size", ["collective", "--gpus", g])
        add("1-size", ["topology", "show", "--gpus", g])
    add("1-size", ["predict", "--gpus", "8", "--pp", "2", "--global-batch", str(10 ** 18)])
    add("1-size", ["predict", "--gpus", "2", "--pp", "2", "--model", "gpt3-125m", "--global-batch", str(10 ** 7)], "ok")
    add("1-size", ["predict", "--gpus", "8", "--tp", str(10 ** 12)])
    add("1-size", ["predict", "--gpus", "8", "--seq-len", str(10 ** 12)])
    add("1-size", ["predict", "--gpus", "8", "--micro-batch", str(10 ** 15)])
    add("1-size", ["plan", "--gpus", "64", "--global-batch", str(10 ** 9)])
    add("1-size", ["plan", "--gpus", "8", "--model", "gpt3-125m", "--global-batch", str(10 ** 6), "--top", "2"], "ok")
    add("1-size", ["plan", "--gpus", "8", "--top", str(10 ** 12), "--model", "gpt3-125m"], "ok")
    add("1-size", ["collective", "--size", "1:1GiB:1.0000001"])
    add("1-size", ["collective", "--size", "1KiB:1GiB:1.0001"])
    add("1-size", ["collective", "--size", ",".join(["1KiB"] * 20000)])
    add("1-size", ["simulate", "--pp", "4", "-m", big])
    add("1-size", ["simulate", "--pp", "100000", "-m", "100000"])
    add("1-size", ["simulate", "--pp", "4", "-m", "100", "--schedule", "interleaved", "--vpp", big])
    add("1-size", ["simulate", "--pp", "4", "-m", "100000"], "ok")
    for name in ("cl_torus_huge.yaml", "cl_ring_huge.yaml", "cl_full_big.yaml", "cl_gpn_huge.yaml"):
        add("1-size", ["topology", "show", "--cluster", f[name]])
    add("1-size", ["collective", "--gpus", "65536", "--size", "1MiB", "--algo", "ring,tree"], "ok")
    for flag, val in (("--watchdog", "-1"), ("--watchdog", "nan"), ("--watchdog", "inf"), ("--watchdog", "0"),
                      ("--timeout", "-5"), ("--timeout", "nan"), ("--threads", "-3"), ("--threads", "0"),
                      ("--global-batch", "0"), ("--global-batch", "-4"), ("--micro-batch", "0"), ("--steps", "0"),
                      ("--steps", big), ("--warmup", "-1"), ("--nproc", "0"), ("--nproc", "-2"), ("--tp", "0"),
                      ("--dp", "0"), ("--local-size", "0"), ("--seq-len", "0"), ("--vpp", "-1"),
                      ("--seq-len", str(10 ** 12))):
        add("1-run", ["run", flag, val])
    add("1-run", ["run", "--steps", "2", "--warmup", "1"], "ok", id_="run (valid flags; launcher stubbed)")
    for argv in (["--ranks-per-host", "0"], ["--ranks-per-host", "-2"], ["--ranks-per-host", "100000"],
                 ["--hosts", "0"], ["--servers", "-1", "--cluster", "ps"], ["--oversubscription", "nan", "--cluster", "racks"],
                 ["--oversubscription", "0", "--cluster", "racks"], ["--oversubscription", "inf", "--cluster", "racks"],
                 ["--link", "nan"], ["--delay", "-1ms"], ["--delay", "inf"]):
        add("1-emulate", ["emulate", "up", *argv])
    add("1-emulate", ["emulate", "run", "--timeout", "-5", "--", "true"])
    add("1-emulate", ["emulate", "run", "--timeout", "nan", "--", "true"])
    add("1-emulate", ["emulate", "up"], "ok", id_="emulate up (valid; stubbed before root actions)")
    # kind 2: bombs, depth, special files
    for name in ("laughs_model.yaml", "deep_flow.yaml", "deep_block.yaml", "deep.json", "deep_config.json",
                 "bad_utf8.yaml", "big_model.yaml", "list_model.yaml", "fifo.yaml", "fifo.json", "adir.yaml"):
        add("2-file", ["predict", *P, "--model", f[name]], id_=f"predict --model {name}")
    add("2-file", ["predict", *P, "--model", "/dev/zero"])
    add("2-file", ["predict", *P, "--model", "/dev/stdin"])
    for name in ("laughs_cluster.yaml", "deep_flow.yaml", "deep.json", "fifo.yaml", "adir.yaml", "bomb.graphml",
                 "garbage.graphml", "big_model.yaml"):
        add("2-file", ["topology", "show", "--cluster", f[name]], id_=f"topology show --cluster {name}")
    add("2-file", ["topology", "show", "--cluster", "/dev/zero"])
    add("2-file", ["simulate", "--pp", "2", "-m", "2", "--stage-times", "1,2", "--cluster", f["fifo.yaml"]],
        id_="simulate --cluster fifo.yaml")
    # kind 4: non-finite and out-of-range
    for name in ("cl_nic_lat_inf.yaml", "cl_nic_eff5.yaml", "cl_nic_eff0.yaml", "cl_nic_eff_neg.yaml", "cl_nic_nan.yaml",
                 "cl_nic_neg.yaml", "cl_nvlink_1e400.yaml", "cl_gpn0.yaml", "cl_gpn_frac.yaml", "cl_gpn_word.yaml",
                 "cl_oversub_nan.yaml", "cl_spines0.yaml", "cl_torus_4d.yaml", "cl_ring_lat_inf.yaml",
                 "cl_star_servers_neg.yaml", "g_lat_inf.yaml", "g_bw_nan.yaml", "g_eff5.yaml", "g_nodes_scalar.yaml",
                 "lat_inf.graphml", "bw_nan.graphml", "eff5.graphml", "dup_cluster.yaml"):
        add("4-cluster", ["topology", "show", "--cluster", f[name]], id_=f"topology show --cluster {name}")
        add("4-cluster", ["collective", "--cluster", f[name], "--size", "1MiB"], id_=f"collective --cluster {name}")
    for name in ("dup_model.yaml", "dup_model.json"):
        add("4-model", ["predict", *P, "--model", f[name]], id_=f"predict --model {name}")
    S = ["simulate", "--pp", "4", "-m", "8"]
    for argv in (["--p2p-ms", "inf"], ["--p2p-ms", "nan"], ["--p2p-ms", "-1"], ["--p2p-ms", "1e308"],
                 ["--stage-times", "1e300,1"], ["--stage-times", "inf,1"], ["--stage-times", "nan,1"],
                 ["--stage-times", ""], ["--stage-times", "/"], ["--stage-times", "1,2,3,4"],
                 ["--schedule", "interleaved", "--vpp", "1"], ["--vpp", "0"], ["--tp", "0"],
                 ["--micro-batch-size", "0", "--model", "gpt3-125m", "--cluster", "dgx-h100"]):
        add("4-sim", [*S, *argv])
    add("4-sim", ["simulate", "--pp", "0", "-m", "8"])
    add("4-sim", ["simulate", "--pp", "4", "-m", "0"])
    add("4-sim", ["simulate", "--pp", "4", "-m", "-3"])
    for algo in ("", ",", " , "):
        add("4-collective", ["collective", "--algo", algo])
    add("4-collective", ["collective", "--gpus", "1"])
    # kind 6: names that are neither a preset nor a readable file
    add("6-name", ["predict", *P, "--model", "a" * 5000], id_="predict --model a*5000")
    add("6-name", ["predict", *P, "--cluster", "c" * 5000], id_="predict --cluster c*5000")
    add("6-name", ["plan", *P, "--model", "m" * 5000], id_="plan --model m*5000")
    add("6-name", ["topology", "show", "--cluster", "x/" * 3000], id_="topology show --cluster x/*3000")
    add("6-name", ["simulate", "--pp", "2", "-m", "2", "--model", "q" * 5000, "--cluster", "dgx-h100"],
        id_="simulate --model q*5000")
    add("6-name", ["run", "--model", "r" * 5000], id_="run --model r*5000")
    return c


_NONFINITE = re.compile(r"(?<![A-Za-z_])(-?inf(inity)?|nan)(?![A-Za-z_])", re.I)


def classify(rc, out: str, err: str, expect: str) -> str:
    if rc is None or rc in (-9, 137) or "MemoryError" in err:
        return "hang"
    if "Traceback (most recent call last)" in err:
        return "traceback"
    lines = [l for l in err.splitlines() if l.strip()]
    if rc == 0:
        if expect == "fail":
            return "nonsense"
        return "nonsense" if _NONFINITE.search(out) else "ok"
    if rc == 2:
        if len(lines) != 1:
            return "multi-line"
        return "ok" if expect == "fail" else "refused-valid"
    return f"exit-{rc}"


def run_case(tree: Path, wrapper: Path, argv: list, timeout: float):
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT_BYTES, MEM_LIMIT_BYTES))
        os.setsid()
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    t0 = time.monotonic()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run([sys.executable, str(wrapper), str(tree), *argv], cwd=tree, env=env, capture_output=True,
                           text=True, errors="replace", timeout=timeout, preexec_fn=limits, stdin=subprocess.DEVNULL)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0, c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    except subprocess.TimeoutExpired as e:
        return None, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            "", time.monotonic() - t0, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[2]), help="source tree to test")
    ap.add_argument("--timeout", type=float, default=20.0, help="wall seconds per case before it counts as a hang "
                    "(the issue's campaign killed at 20 s)")
    ap.add_argument("--json", help="write every case's result here")
    ap.add_argument("--only", help="run the cases whose id contains this text")
    a = ap.parse_args(argv)
    tree = Path(a.tree).resolve()
    results = []
    with tempfile.TemporaryDirectory(prefix="parsim-hostile-") as tmp:
        d = Path(tmp)
        wrapper = d / "_invoke.py"
        wrapper.write_text(WRAPPER)
        (d / "files").mkdir()
        files = make_files(d / "files")
        for kind, id_, args, expect in cases(files):
            if a.only and a.only not in id_:
                continue
            rc, out, err, secs, cpu = run_case(tree, wrapper, args, a.timeout)
            verdict = classify(rc, out, err, expect)
            first = next((l for l in reversed(err.splitlines()) if l.strip()), "")[:160]
            results.append({"kind": kind, "case": id_, "expect": expect, "rc": rc, "verdict": verdict,
                            "seconds": round(secs, 2), "cpu_s": cpu and round(cpu, 2), "stderr_lines": len(err.splitlines()), "last_stderr": first})
            cpu_text = f"{cpu:5.1f}" if cpu is not None else "    -"
            print(f"{verdict:12} {secs:6.1f}s wall {cpu_text}s cpu  [{kind}] {id_}  | {first[:110]}", flush=True)
    counts = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print(f"\n{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if a.json:
        Path(a.json).write_text(json.dumps({"tree": str(tree), "counts": counts, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    from parsim.errors import run_main
    raise SystemExit(run_main(main, "python -m studies.robustness.hostile_inputs"))
