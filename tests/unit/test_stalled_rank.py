"""Which stalled rank the launcher blames (backends/torchdist/launch.py _first_stalled)."""
from backends.torchdist.launch import _first_stalled
from backends.torchdist.runner import WAITS_ON_PEERS


def _beat(work, rank, since, phase):
    (work / f"rank{rank}.beat").write_text(f"{since:.3f} {phase}".ljust(200))


def test_a_rank_waiting_on_its_peers_is_not_blamed_before_one_that_was_not(tmp_path):
    # CI 2026-11-30: rank 1 hung at the start of its forward (fault injection) but, descheduled on a busy machine,
    # beat 'forward' a few ms after rank 0 beat 'dp gradient sync' and sat there waiting for it: by last-progress
    # time alone rank 0 "stopped first" and was blamed
    _beat(tmp_path, 0, 100.000, "step 2 dp gradient sync (native)" + WAITS_ON_PEERS)
    _beat(tmp_path, 1, 100.004, "step 2 forward")
    assert _first_stalled({0: 100.000, 1: 100.004}, tmp_path) == 1
    # both waiting (or neither): the one that stopped first
    _beat(tmp_path, 1, 100.004, "step 2 barrier" + WAITS_ON_PEERS)
    assert _first_stalled({0: 100.000, 1: 100.004}, tmp_path) == 0
    _beat(tmp_path, 0, 100.000, "step 2 forward")
    _beat(tmp_path, 1, 99.000, "step 2 forward")
    assert _first_stalled({0: 100.000, 1: 99.000}, tmp_path) == 1
    # a rank without a heartbeat file is taken as not waiting
    assert _first_stalled({0: 100.000, 5: 101.0}, tmp_path) == 0
