"""Emulated multi-host cluster: Linux network namespaces joined by tc-shaped veths.

plan.py     cluster graph -> namespaces, bridges, veths, addresses (pure)
presets.py  small graphs: hosts on one switch, two racks under a spine, ps hosts
cluster.py  build / tear down (context manager, signals, `down` for leftovers)
probe.py    TCP throughput and round-trip probes; the graph with measured links
model.py    prediction: parsim's schedule pricing plus gloo's pair serialisation
"""
