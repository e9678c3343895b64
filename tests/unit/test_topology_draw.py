"""`topology show --draw` lays a cluster out from its graph (parsim.topology_draw.layout): servers as
boxes, fabric tiers above them, a torus as its grid -- for every preset, no picture per preset."""
import pytest

from parsim.topology import cluster_names, load_cluster
from parsim.topology_draw import layout


def _sizes(name):
    return {"dgx-h100-fattree": 64, "dgx-h100-fattree-2to1": 64, "dgx-h100-rail": 32}.get(name)


def test_fat_tree_boxes_and_tiers():
    c = load_cluster("dgx-h100-fattree", 64)        # 8 nodes of 8 GPUs, 4 nodes per leaf: 2 leaves, 4 spines
    lay = layout(c)
    g = c.graph
    assert sorted(lay.boxes) == list(range(8))
    for s, (x0, y0, x1, y1) in lay.boxes.items():
        mem = lay.members[s]
        assert len([n for n in mem if g.nodes[n]["kind"] == "device"]) == 8 and len(mem) == 8 + 8 + 1   # GPUs, NICs, NVSwitch
        assert all(x0 < lay.pos[n][0] < x1 and y0 < lay.pos[n][1] < y1 for n in mem)
    spans = sorted((x0, x1) for x0, _, x1, _ in lay.boxes.values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))                 # boxes do not overlap
    # rows inside a box: NVSwitch below the GPUs, NICs above them; tiers: leaves, then spines
    y = lambda n: lay.pos[n][1]                                                 # noqa: E731
    assert y("n0/nvswitch") < y("n0/gpu0") < y("n0/nic0") < y("leaf0") < y("spine0")
    assert lay.tiers == {1: ["leaf0", "leaf1"], 2: ["spine0", "spine1", "spine2", "spine3"]}
    # leaf0 serves nodes 0-3: it sits left of leaf1 (ordered by the mean x of what it links below)
    assert lay.pos["leaf0"][0] < lay.pos["leaf1"][0]


def test_rail_nics_meet_their_rails_in_order():
    c = load_cluster("dgx-h100-rail", 32)
    lay = layout(c)
    rails = lay.tiers[1]
    assert rails == [f"rail{i}" for i in range(8)]                            # rail i above NIC i's mean x
    assert lay.tiers[2] == ["spine0", "spine1"]


def test_torus_is_its_grid():
    c = load_cluster("torus-4x4")
    lay = layout(c)
    assert lay.direct and not lay.boxes
    pts = [lay.pos[d] for d in c.devices]
    assert len(set(pts)) == 16 and len({x for x, _ in pts}) == 4 and len({y for _, y in pts}) == 4
    # rank r at row r // 4, column r % 4; the 8 wrap-around links (length 3) are the arcs
    assert all(lay.pos[d] == (r % 4, -float(r // 4)) for r, d in enumerate(c.devices))
    assert len(lay.arcs) == 8


def test_star_hosts_join_their_devices_and_servers_get_boxes():
    c = load_cluster("ps-star")                      # 4 worker hosts, 2 parameter-server hosts, one switch
    lay = layout(c)
    assert len(lay.boxes) == 6 and lay.tiers == {1: ["sw0"]}
    assert all(any(c.graph.nodes[n]["kind"] == "host" for n in m) for m in lay.members.values())


@pytest.mark.parametrize("name", cluster_names())
def test_every_preset_lays_out_and_draws(name, tmp_path):
    from parsim.topology import draw
    c = load_cluster(name, _sizes(name))
    lay = layout(c)
    assert set(lay.pos) == set(c.graph)
    assert len(set(lay.pos.values())) == len(lay.pos)                        # no two nodes on one spot
    p = draw(c, tmp_path / f"{name}.png")
    assert p.stat().st_size > 0
