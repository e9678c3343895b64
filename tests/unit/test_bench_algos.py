"""`parsim run --bench` with an algorithm the world cannot run (issue 12 §4): ps-sharded without
server hosts printed "schedule has 5 ranks but 4 nodes were given" once per rank and dropped the
other algorithms. Now: one line, the rest run."""
import pytest

from backends.torchdist.bench import runnable_algorithms
from parsim.errors import ParsimError


def test_ps_sharded_without_servers_is_refused_in_one_line_and_the_rest_run(capsys, monkeypatch):
    monkeypatch.delenv("PARSIM_NETEM_STATE", raising=False)
    assert runnable_algorithms("allreduce", ["ring", "ps-sharded", "hd"], 4, 2 ** 20) == ["ring", "hd"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipping ps-sharded" in err and "dedicated server" in err, err
    assert "5 ranks but 4 nodes" not in err


def test_other_ranks_stay_quiet_and_nothing_left_is_an_error(capsys, monkeypatch):
    monkeypatch.delenv("PARSIM_NETEM_STATE", raising=False)
    assert runnable_algorithms("allreduce", ["ps-sharded", "ring"], 4, 2 ** 20, quiet=True) == ["ring"]
    assert capsys.readouterr().err == ""
    with pytest.raises(ParsimError, match="dedicated server"):
        runnable_algorithms("allreduce", ["ps-sharded"], 4, 2 ** 20, quiet=True)
