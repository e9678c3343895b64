"""`parsim emulate down` policy, with `ip` faked (the netem integration tests do it for real, as root):
a cluster whose owner is alive is never touched; one whose owner is gone is; a namespace no state
here claims goes only when its alias names an owner that is gone; a planned name that someone else
created is never removed with the state that planned it."""
from __future__ import annotations

import json
import os

import pytest

import backends.netem.cluster as C


@pytest.fixture
def fake_ip(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSIM_NETEM_STATE_DIR", str(tmp_path))
    world = {"ns": {}, "deleted": []}          # namespace -> owner alias tuple or None
    monkeypatch.setattr(C, "list_namespaces", lambda: list(world["ns"]))
    monkeypatch.setattr(C, "ns_owner", lambda n: world["ns"].get(n))

    def delete(names):
        for n in names:
            world["ns"].pop(n, None)
            world["deleted"].append(n)
        return list(names)
    monkeypatch.setattr(C, "delete_namespaces", delete)
    return world


ME = (os.getpid(), C._proc_start(os.getpid()))
DEAD = (2 ** 22 + 7, "1")                      # no such pid (above the default pid_max)


def _state(tmp_path, prefix, owner, names, persistent=False, created=None):
    (tmp_path / f"{prefix}.json").write_text(json.dumps({
        "prefix": prefix, "owner_pid": owner[0], "owner_start": owner[1], "persistent": persistent,
        "namespaces": names, "created_namespaces": names if created is None else created, "hosts": []}))


def test_live_owner_kept_dead_owner_removed(fake_ip, tmp_path):
    live, dead = ["ps00001-h0", "ps00001-s0"], ["ps00002-h0", "ps00002-s0"]
    for n in live:
        fake_ip["ns"][n] = (*ME, "")
    for n in dead:
        fake_ip["ns"][n] = (*DEAD, "")
    _state(tmp_path, "ps00001-", ME, live)
    _state(tmp_path, "ps00002-", DEAD, dead, persistent=True)     # brought `up`: its `up` process exited
    assert sorted(C.down()) == dead
    assert sorted(fake_ip["ns"]) == live and (tmp_path / "ps00001-.json").exists()
    assert not (tmp_path / "ps00002-.json").exists()
    assert sorted(C.down(all_runs=True)) == live


def test_unclaimed_namespaces_need_an_owner_that_is_gone(fake_ip, tmp_path):
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    kept_up = other_dir / "ps000aa-.json"
    kept_up.write_text(json.dumps({"persistent": True}))
    fake_ip["ns"].update({
        "ps000a1-h0": (*ME, ""),                        # a live run using another state directory
        "ps000a2-h0": (*DEAD, str(other_dir / "gone.json")),   # its owner died, no state anywhere: leftover
        "ps000aa-h0": (*DEAD, str(kept_up)),            # brought `up` elsewhere: that directory's `down` decides
        "ps000a3-h0": None,                             # no owner alias: cannot tell whose
    })
    assert C.down() == ["ps000a2-h0"]
    assert sorted(fake_ip["ns"]) == ["ps000a1-h0", "ps000a3-h0", "ps000aa-h0"]


def test_a_planned_name_someone_else_created_is_not_removed(fake_ip, tmp_path):
    # the run planned h0 and h1 but `ip netns add h1` failed: h1 belongs to another (live) owner
    fake_ip["ns"].update({"ps00003-h0": (*DEAD, ""), "ps00003-h1": (*ME, "")})
    _state(tmp_path, "ps00003-", DEAD, ["ps00003-h0", "ps00003-h1"], created=[])
    assert C.down() == ["ps00003-h0"]                    # h0 carries the dead owner's alias: its own
    assert list(fake_ip["ns"]) == ["ps00003-h1"]


def test_leftovers_are_killed_runs_not_clusters_brought_up(fake_ip, tmp_path):
    fake_ip["ns"].update({"ps00004-h0": (*DEAD, ""), "ps00005-h0": (*DEAD, "")})
    _state(tmp_path, "ps00004-", DEAD, ["ps00004-h0"])                  # a killed `emulate run`
    _state(tmp_path, "ps00005-", DEAD, ["ps00005-h0"], persistent=True)  # `emulate up`: stays until `down`
    assert C.leftovers() == [("ps00004-", ["ps00004-h0"])]
    assert C.reap_leftovers() == ["ps00004-h0"] and list(fake_ip["ns"]) == ["ps00005-h0"]


def test_a_state_from_before_owner_aliases_still_cleans_its_own(fake_ip, tmp_path):
    # no created_namespaces key, no aliases (older parsim): its planned names without an alias are its own
    fake_ip["ns"].update({"ps00006-h0": None, "ps00006-h1": (*ME, "")})
    (tmp_path / "ps00006-.json").write_text(json.dumps({"prefix": "ps00006-", "owner_pid": DEAD[0],
                                                        "owner_start": DEAD[1], "namespaces": ["ps00006-h0", "ps00006-h1"]}))
    assert C.down() == ["ps00006-h0"] and list(fake_ip["ns"]) == ["ps00006-h1"]


def test_a_state_is_kept_while_a_namespace_it_planned_cannot_be_attributed(fake_ip, tmp_path):
    fake_ip["ns"].update({"ps00007-h0": (*DEAD, ""), "ps00007-h1": None})
    _state(tmp_path, "ps00007-", DEAD, ["ps00007-h0", "ps00007-h1"], created=[])
    assert C.down() == ["ps00007-h0"]
    assert (tmp_path / "ps00007-.json").exists() and list(fake_ip["ns"]) == ["ps00007-h1"]


def test_the_next_up_reaps_namespaces_an_interrupted_teardown_left_without_a_state(fake_ip, tmp_path):
    # trial 2026-11-30: Ctrl-C during link probing left ps0ce03-h0/h1/s0 with no state file, and the next `up`
    # (reap_leftovers) did not remove them; only `down` did. Same policy as down: an owner alias that is gone.
    fake_ip["ns"].update({"ps0ce03-h0": (*DEAD, ""), "ps0ce03-s0": (*DEAD, ""),
                          "ps0ce04-h0": (*ME, ""),            # a live owner: kept
                          "ps0ce05-h0": None})                 # no alias: not attributable, kept
    assert sorted(C.reap_leftovers()) == ["ps0ce03-h0", "ps0ce03-s0"]
    assert sorted(fake_ip["ns"]) == ["ps0ce04-h0", "ps0ce05-h0"]
