"""Building clusters (issue 13, item 7), as benchmarks. Targets are reported by the speed check
(`python -m tests.tracking.speed`), never asserted here."""
from parsim.topology import load_cluster


def test_bench_build_cluster_16384_gpus(bench):
    # the whole of load_cluster for 2,048 DGX H100 nodes: graph (16,384 GPUs, NICs and NVSwitches, 49,152
    # links), link classes checked once, rank devices and their profile checked (no caches: a fresh graph)
    c = bench(lambda: load_cluster("dgx-h100", 16384), rounds=7, target_s=0.2,
              target="16,384-GPU DGX H100 cluster built (graph + device profiles) in < 0.2 s")
    assert c.num_devices == 16384 and c.graph.number_of_edges() == 3 * 16384
    assert c.node_of(16383) == 2047 and c.device.name == "h100-sxm"
