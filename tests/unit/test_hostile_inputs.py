"""Issue 11, kinds 1, 2, 4 and 6: hostile sizes, files and numbers are refused in one line, before
anything big is allocated, naming the value and the limit; valid values just inside still work."""
import contextlib
import io
import json
import os
import time

import networkx as nx
import pytest

from parsim import limits
from parsim.cli import main
from parsim.errors import ParsimError
from parsim.fileio import read_user_file
from parsim.model import load_model
from parsim.topology import load_cluster, ring, torus

GOOD_MODEL = "layers: 2\nhidden: 128\nheads: 4\nkv_heads: 2\nffn_hidden: 512\nvocab: 1000\nseq_len: 256\n"
DGX = ("builder: dgx\ndevice: h100-sxm\ngpus_per_node: 8\nnvlink_GBps: 450\nnvlink_latency_us: 1\n"
       "nic_GBps: 50\nnic_latency_us: 5\n")


def cli(*argv):
    """parsim.cli.main in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def refused(*argv, needle=""):
    rc, out, err = cli(*argv)
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


# ---------------------------------------------------------------- kind 1: sizes, with the limit named

@pytest.mark.parametrize("argv, needle", [
    (["predict", "--gpus", 10 ** 9], "limit of 65536 (parsim.limits.MAX_DEVICES)"),
    (["plan", "--gpus", 2 ** 50], "parsim.limits.MAX_DEVICES"),
    (["collective", "--gpus", 10 ** 9], "parsim.limits.MAX_DEVICES"),
    (["topology", "show", "--gpus", 2 ** 50], "parsim.limits.MAX_DEVICES"),
    (["predict", "--gpus", 8, "--pp", 2, "--global-batch", 10 ** 18], "parsim.limits.MAX_GLOBAL_BATCH"),
    (["plan", "--gpus", 64, "--global-batch", 10 ** 9], "parsim.limits.MAX_GLOBAL_BATCH"),
    (["predict", "--gpus", 8, "--seq-len", 10 ** 12], "parsim.limits.MAX_SEQ_LEN"),
    (["simulate", "--pp", 4, "-m", 10 ** 9], "parsim.limits.MAX_GLOBAL_BATCH"),
    # 2·pp·vpp·m = 2·4·2·300,000 = 4.8 M ops > 2,097,152
    (["simulate", "--pp", 4, "-m", 300_000, "--schedule", "interleaved"], "4800000 ops, above the limit of 2097152"),
    (["simulate", "--pp", 60_000, "-m", 60_000], "parsim.limits.MAX_SIM_OPS"),
    # 1 B .. 1 GiB by 1.0000001: log(2^30)/log(1.0000001) + 1 ≈ 2.08e8 sizes
    (["collective", "--size", "1:1GiB:1.0000001"], "2.08e+08 sizes, above the limit of 1024"),
    (["collective", "--size", ",".join(["1KiB"] * 2000)], "2000 sizes, above the limit of 1024"),
    (["run", "--watchdog", -1], "argument --watchdog: -1: expected a number in (0, 604800]"),
    (["run", "--watchdog", "nan"], "expected a finite number"),
    (["run", "--timeout", "inf"], "--timeout"),
    (["run", "--threads", -3], "-3 is below 1"),
    (["run", "--global-batch", 0], "0 is below 1"),
    (["run", "--steps", 10 ** 9], "parsim.limits.MAX_STEPS"),
    (["emulate", "up", "--ranks-per-host", 0], "--ranks-per-host: 0 is below 1"),
    (["emulate", "up", "--ranks-per-host", -2], "--ranks-per-host: -2 is below 1"),
    (["emulate", "up", "--oversubscription", "nan"], "--oversubscription"),
])
def test_sizes_refused_with_the_limit_named(argv, needle):
    t0 = time.process_time()
    refused(*argv, needle=needle)
    assert time.process_time() - t0 < 30      # nothing was built (a generous CPU bound, not wall clock)


@pytest.mark.parametrize("text, needle", [
    ("builder: torus\ndevice: cpu\ndims: [100000, 100000]\nlink_GBps: 1\nlink_latency_us: 1\n",
     "dims = 100000 is above the limit of 65536"),
    ("builder: torus\ndevice: cpu\ndims: [1000, 1000]\nlink_GBps: 1\nlink_latency_us: 1\n",
     "1000000 devices is above the limit"),                          # 1e3·1e3 = 1e6
    ("builder: ring\ndevice: cpu\ndevices: 1000000000\nlink_GBps: 1\nlink_latency_us: 1\n", "parsim.limits.MAX_DEVICES"),
    # full mesh of 2,000 devices: 2000·1999/2 = 1,999,000 links > 524,288
    ("builder: full\ndevice: cpu\ndevices: 2000\nlink_GBps: 1\nlink_latency_us: 1\n", "1999000 links is above the limit"),
    (DGX.replace("gpus_per_node: 8", "gpus_per_node: 1000000000"), "parsim.limits.MAX_DEVICES"),
])
def test_unsized_cluster_files_refused_before_building(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ParsimError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_cluster(str(f))


def test_builders_check_size_before_allocating():
    with pytest.raises(ParsimError, match="MAX_DEVICES"):
        ring("r", 10 ** 9, "cpu", 1e9, 1e-6)
    with pytest.raises(ParsimError, match="MAX_DEVICES"):
        torus("t", (10 ** 5, 10 ** 5), "cpu", 1e9, 1e-6)
    # just inside: a 256x256 torus has 65,536 devices and 2·65,536 links
    assert torus("t", (4, 4), "cpu", 1e9, 1e-6).num_devices == 16


def test_predict_beyond_the_simulator_limit_uses_the_closed_form_and_says_so():
    from parsim.plan import Plan
    from parsim.predict import predict
    # m = 10^7 micro-batches, pp = 2: 2·2·10^7 = 4·10^7 ops > MAX_SIM_OPS; the closed form prices it
    plan = Plan(dp=1, pp=2, global_batch=10 ** 7)
    rep = predict("gpt3-125m", "dgx-h100", plan)
    assert any("closed form only" in n and "MAX_SIM_OPS" in n for n in rep.notes)
    small = predict("gpt3-125m", "dgx-h100", Plan(dp=1, pp=2, global_batch=64))     # played: 256 ops
    assert all(abs(v) < float("inf") for v in rep.breakdown_s.values()) and rep.step_time_s > 0
    # compute is m micro-batches of the bottleneck stage: 10^7 / 64 times the small plan's
    assert rep.breakdown_s["compute"] == pytest.approx(small.breakdown_s["compute"] * 10 ** 7 / 64, rel=1e-9)


# ---------------------------------------------------------------- kind 2: bombs, depth, special files

def _laughs(tail):
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for x, y in zip("bcdefghi", "abcdefgh"):
        text += f"{x}: &{x} [" + ",".join([f"*{y}"] * 9) + "]\n"
    return text + tail


@pytest.mark.parametrize("name, text, needle", [
    ("laughs.yaml", _laughs("name: *i\n" + GOOD_MODEL), "YAML alias *a at line 2: aliases are refused"),
    ("flow.yaml", "[" * 20000 + "]" * 20000, "nested deeper than 32 levels"),
    ("deep.json", "[" * 100000 + "]" * 100000, "nested deeper than 32 levels"),
    ("config.json", '{"a":' * 100000 + "1" + "}" * 100000, "nested deeper than 32 levels"),
    ("deep40.json", "[" * 40 + "]" * 40, "nested deeper than 32 levels"),      # under the recursion limit too
    ("dup.yaml", GOOD_MODEL + "layers: 4\n", "duplicate key 'layers' at line 8"),
    ("dup.json", '{"layers": 2, "hidden": 128, "layers": 8}', "duplicate key 'layers'"),
    ("utf.yaml", b"name: \xff\n", "not UTF-8"),
    ("big.yaml", GOOD_MODEL + "#" + "x" * (2 ** 20) + "\n", "above the limit of 1048576"),
])
def test_model_file_bombs_refused(tmp_path, name, text, needle):
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ParsimError, match=None) as e:
        load_model(str(f))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)                              # no writer: a blocking open would hang here
    with pytest.raises(ParsimError, match="it is a FIFO; expected a regular file"):
        load_model(str(fifo))
    with pytest.raises(ParsimError, match="it is a device"):
        load_model("/dev/zero")                  # would read forever
    with pytest.raises(ParsimError, match="it is a directory"):
        load_cluster(str(tmp_path))
    with pytest.raises(ParsimError, match="it is a FIFO"):
        load_cluster(str(fifo))


def test_cluster_alias_and_graphml_entities_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(_laughs("name: *i\nbuilder: ring\ndevice: cpu\nlink_GBps: 1\nlink_latency_us: 1\n"))
    with pytest.raises(ParsimError, match="aliases are refused"):
        load_cluster(str(f))
    g = tmp_path / "c.graphml"
    g.write_text('<?xml version="1.0"?>\n<!DOCTYPE g [<!ENTITY a "aaaa">]>\n<graphml/>\n')
    with pytest.raises(ParsimError, match="DOCTYPE/ENTITY declarations are refused"):
        load_cluster(str(g))


def test_anchors_without_aliases_and_plain_files_still_read(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("base: &b 1\n")
    assert read_user_file(f, "model") == {"base": 1}
    g = tmp_path / "m.json"
    g.write_text(json.dumps({"x": [[1, 2], {"y": None}]}))
    assert read_user_file(g, "model") == {"x": [[1, 2], {"y": None}]}


# ---------------------------------------------------------------- kind 4: non-finite and out-of-range numbers

@pytest.mark.parametrize("text, needle", [
    (DGX.replace("nic_latency_us: 5", "nic_latency_us: .inf"), "nic_latency_us = inf: expected a finite number"),
    (DGX + "nic_efficiency: 5\n", "nic_efficiency = 5 is above the limit of 1"),
    (DGX + "nic_efficiency: 0\n", "nic_efficiency = 0: expected a number in (0, 1]"),
    (DGX.replace("nic_GBps: 50", "nic_GBps: .nan"), "nic_GBps = nan"),
    (DGX.replace("nvlink_GBps: 450", "nvlink_GBps: 1e400"), "nvlink_GBps = inf"),
    (DGX.replace("gpus_per_node: 8", "gpus_per_node: 0"), "gpus_per_node = 0: expected an integer >= 1"),
    (DGX.replace("gpus_per_node: 8", "gpus_per_node: 2.5"), "gpus_per_node = 2.5: expected an integer"),
    (DGX + "nic_efficency: 0.9\n", "unknown key 'nic_efficency'; did you mean nic_efficiency"),
    (DGX.replace("builder: dgx", "builder: fat_tree") + "oversubscription: .nan\n", "oversubscription = nan"),
    ("builder: torus\ndevice: cpu\ndims: [2, 2, 2, 2]\nlink_GBps: 1\nlink_latency_us: 1\n", "1-3 sizes"),
    ("nodes:\n  - {id: a, kind: device, profile: cpu}\n  - {id: b, kind: device, profile: cpu}\n"
     "links:\n  - {a: a, b: b, bandwidth_GBps: 10, latency_us: .inf}\n", "latency_us = inf"),
    ("nodes:\n  - {id: a, kind: device, profile: cpu}\n  - {id: b, kind: device, profile: cpu}\n"
     "links:\n  - {a: a, b: b, bandwidth_GBps: 10, latency_us: 1, efficiency: 5}\n", "efficiency = 5"),
    ("nodes: 7\nlinks: []\n", "nodes must be a list of mappings"),
    ("nodes:\n  - {id: a, kind: device, profile: cpu}\nlinks: []\ngpus_per_node: 0\n", "gpus_per_node = 0"),
])
def test_cluster_file_numbers_checked(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ParsimError) as e:
        load_cluster(str(f))
    assert needle in str(e.value), str(e.value)


def _graphml(path, bw="1e9", lat="1e-6", eff="1"):
    g = nx.Graph()
    g.add_node("a", kind="device", profile="cpu")
    g.add_node("b", kind="device", profile="cpu")
    g.add_edge("a", "b", bandwidth=float(bw), latency=float(lat), efficiency=float(eff))
    nx.write_graphml(g, path)
    return str(path)


def test_graphml_numbers_checked(tmp_path):
    c = load_cluster(_graphml(tmp_path / "ok.graphml", bw="2e9", eff="0.5"))
    # bandwidth is stored as delivered (SI, B/s): 2e9 read back as given
    assert c.graph.edges["a", "b"]["bandwidth"] == 2e9
    for kw, needle in (({"lat": "inf"}, "latency (s) = inf"), ({"bw": "nan"}, "bandwidth (B/s) = nan"),
                       ({"eff": "5"}, "efficiency = 5")):
        with pytest.raises(ParsimError) as e:
            load_cluster(_graphml(tmp_path / "bad.graphml", **kw))
        assert needle in str(e.value)


def test_cluster_file_in_range_values_still_priced(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(DGX + "nic_efficiency: 0.5\nnodes_per_leaf: 1\n")
    c = load_cluster(str(f), 16)
    # NIC links deliver rate·efficiency = 50 GB/s · 0.5 = 25e9 B/s per direction
    assert c.graph.edges["n0/nic0", "fabric"]["bandwidth"] == 25e9


@pytest.mark.parametrize("argv, needle", [
    (["--p2p-ms", "inf"], "--p2p-ms: inf: expected a finite number"),
    (["--p2p-ms", "nan"], "expected a finite number"),
    (["--stage-times", "1e300,1"], "is above the limit of 8.64e+07"),   # MAX_OP_TIME_S = 86,400 s = 8.64e7 ms
    (["--stage-times", "inf,1"], "expected a finite number"),
    (["--stage-times", ""], "--stage-times '' is empty"),
    (["--stage-times", "/"], "is empty"),
    (["--schedule", "interleaved", "--vpp", "1"], "interleaved needs vpp >= 2"),
])
def test_simulate_numbers_checked(argv, needle):
    refused("simulate", "--pp", 4, "-m", 8, *argv, needle=needle)


def test_simulate_near_the_limits_is_finite():
    # 86,400 s stages: (m + p - 1)·(tf + tb) = (8 + 3)·(2·86,400 s) = 1,900,800 s, finite
    rc, out, err = cli("simulate", "--pp", 4, "-m", 8, "--stage-times", "86400000,86400000", "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["makespan_s"] == pytest.approx(11 * 2 * 86_400)


@pytest.mark.parametrize("algo", ["", ",", " , "])
def test_collective_empty_algo_refused(algo):
    refused("collective", "--algo", algo, needle="names no algorithm")


# ---------------------------------------------------------------- kind 6: long names

@pytest.mark.parametrize("argv", [
    ["predict", "--gpus", 8, "--model", "a" * 5000],
    ["predict", "--gpus", 8, "--cluster", "c" * 5000],
    ["topology", "show", "--cluster", "x/" * 3000],
    ["simulate", "--pp", 2, "-m", 2, "--model", "q" * 5000, "--cluster", "dgx-h100"],
])
def test_long_names_are_one_short_line(argv):
    err = refused(*argv, needle="lists the presets")     # a missing file or an unknown preset: never the whole list
    assert len(err) < 600       # the name is shown shortened, with its length


def test_limits_are_documented_in_readme():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    names = [k for k in vars(limits) if k.startswith("MAX_")]
    missing = [k for k in names if k not in readme]
    assert not missing, f"README's Limits section does not list {missing}"


def test_graphml_device_attributes_checked(tmp_path):
    # `node` orders the ranks and names a device's server: a string there used to end in a TypeError
    # from the rank sort ('<' between int and str); GraphML without profiles named no profile at all
    g = nx.Graph()
    g.add_node("a", kind="device", profile="cpu", node="abc")
    g.add_node("b", kind="device", profile="cpu")
    g.add_edge("a", "b", bandwidth=1e9, latency=1e-6)
    nx.write_graphml(g, tmp_path / "n.graphml")
    with pytest.raises(ParsimError, match="device 'a' node = 'abc': expected an integer"):
        load_cluster(str(tmp_path / "n.graphml"))
    for n in g:
        g.nodes[n].pop("profile")
        g.nodes[n].pop("node", None)
    nx.write_graphml(g, tmp_path / "p.graphml")
    with pytest.raises(ParsimError, match="devices have no profile"):
        load_cluster(str(tmp_path / "p.graphml"))
