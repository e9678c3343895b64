"""Progress of `parsim run` / `parsim calibrate` on stderr: what the ranks' heartbeats say, and never a
byte on stdout (which may be JSON)."""
import pytest

from parsim.commands.run import run_progress


@pytest.mark.parametrize("phases, expected", [
    ({}, (0, "starting ranks: 0/2 up")),
    ({0: "", 1: "start-up (import torch)"}, (0, "starting ranks: 1/2 up (start-up (import torch))")),
    ({0: "build", 1: "init_process_group"}, (0, "starting ranks: 2/2 up (build, init_process_group)")),
    # rank 1 is in step 3 (steps 0, 1, 2 done) and rank 0 already in step 4: the slowest rank counts
    ({0: "step 4 forward", 1: "step 3 dp gradient sync (ring)"}, (3, "step 4/10: rank 0 step 4 forward")),
    ({0: "step 9 optimizer", 1: "report"}, (9, "step 10/10: rank 0 step 9 optimizer")),
    ({0: "teardown", 1: "teardown"}, (10, "finishing: rank 0 teardown")),
])
def test_run_progress_reads_the_heartbeat_phases(phases, expected):
    assert run_progress(phases, 2, 10) == expected


def test_progress_off_a_terminal_is_one_line_per_stage_on_stderr(capsys, monkeypatch):
    from parsim.progress import bar
    monkeypatch.delenv("PARSIM_PROGRESS", raising=False)
    with bar("parsim calibrate", 3) as b:       # stderr is captured: not a terminal
        b.update(0, "GEMM fp32")
        b.update(0, "GEMM fp32")               # the same stage again: no second line
        b.advance("memory copy")
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("parsim calibrate: [0/3, ") and lines[0].endswith("] GEMM fp32")
    assert lines[1].startswith("parsim calibrate: [1/3, ") and lines[1].endswith("] memory copy")


def test_run_progress_is_silent_off_a_terminal_and_when_turned_off(capsys, monkeypatch):
    from parsim.progress import bar
    for env in (None, "0"):
        if env is None:
            monkeypatch.delenv("PARSIM_PROGRESS", raising=False)
        else:
            monkeypatch.setenv("PARSIM_PROGRESS", env)
        with bar("parsim run", 5, lines=False) as b:
            b.update(2, "step 3/5")
        assert capsys.readouterr() == ("", "")
