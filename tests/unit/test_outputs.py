"""Every output file goes through parsim.outputs: bad paths are one-line errors naming the path, checked
before any long work; writes are atomic (temp file made by mkstemp in the target directory, fsync, rename),
so a crash or kill -9 mid-write leaves the previous file; non-regular targets are never replaced."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parsim.cli import main
from parsim.errors import ParsimError
from parsim.outputs import FIGURE, JSON, atomic_path, check_output_dir, check_output_path, write_atomic

ROOT = Path(__file__).resolve().parents[2]


def _one_line_error(capsys, argv, needle):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and needle in err, err
    return err


# -- check_output_path: each kind of bad path ------------------------------------------------------

def test_missing_directory_is_named_and_not_created(tmp_path):
    target = tmp_path / "no" / "such" / "x.json"
    with pytest.raises(ParsimError, match=r"directory '.*/no/such' does not exist"):
        check_output_path(target, JSON, "--out")
    assert not (tmp_path / "no").exists()          # never created silently


def test_directory_target_is_refused(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ParsimError, match="d.json: it is a directory"):
        check_output_path(tmp_path / "d.json", JSON, "--out")


def test_device_node_is_refused_and_left_alone():
    before = os.stat("/dev/null")
    with pytest.raises(ParsimError, match="/dev/null: it exists and is not a regular file"):
        write_atomic("/dev/null", "{}", None, "--out")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "f.json")
    with pytest.raises(ParsimError, match="not a regular file"):
        check_output_path(tmp_path / "f.json", JSON)


def test_symlink_is_refused_and_its_target_untouched(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    (tmp_path / "link.json").symlink_to(real)
    with pytest.raises(ParsimError, match="link.json: it is a symbolic link"):
        write_atomic(tmp_path / "link.json", "new", JSON)
    assert (tmp_path / "link.json").is_symlink() and real.read_text() == "old"


@pytest.mark.parametrize("name,kinds,needle", [
    ("x.txt", FIGURE, "unknown file type '.txt': expected one of .png, .svg, .pdf"),
    ("x", FIGURE, "unknown file type '(no suffix)'"),
    ("x.png", JSON, "unknown file type '.png': expected one of .json"),
])
def test_unknown_suffix_is_refused(tmp_path, name, kinds, needle):
    with pytest.raises(ParsimError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_output_path(tmp_path / name, kinds, "--plot")
    assert not (tmp_path / name).exists()


def test_name_too_long_is_one_line(tmp_path):
    with pytest.raises(ParsimError, match="is 304 bytes; at most 255") as e:
        check_output_path(tmp_path / ("a" * 299 + ".json"), JSON)              # 299 + 5 = 304 bytes
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_unwritable_directory_is_refused(tmp_path, monkeypatch):
    # the read-only file system case without mounting: mkstemp fails as it would with EROFS
    import errno
    import tempfile

    def erofs(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "mkstemp", erofs)
    with pytest.raises(ParsimError, match="cannot write --out .*x.json: Read-only file system"):
        check_output_path(tmp_path / "x.json", JSON, "--out")


def test_read_only_mount_via_cli(tmp_path):
    """A real read-only file system (a tmpfs mounted ro in a private mount namespace)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private read-only mount")
    d = tmp_path / "ro"
    d.mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {d} && exec {sys.executable} -m parsim predict --gpus 8 "
              f"--out {d}/x.json")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    if "mount:" in p.stderr or "unshare:" in p.stderr:
        pytest.skip(f"cannot mount here: {p.stderr.strip()}")
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert p.stderr.count("\n") == 1 and "x.json: Read-only file system" in p.stderr, p.stderr


def test_output_directory_checks(tmp_path):
    assert check_output_dir(tmp_path / "new", "--trace") == tmp_path / "new"     # created later, leaf only
    with pytest.raises(ParsimError, match="directory '.*/a' does not exist"):
        check_output_dir(tmp_path / "a" / "b", "--trace")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ParsimError, match="f: it exists and is not a directory"):
        check_output_dir(tmp_path / "f", "--trace")


# -- write_atomic: atomic, secure temp names, modes -------------------------------------------------

def test_writes_str_bytes_and_callables(tmp_path):
    assert write_atomic(tmp_path / "a.json", '{"a": 1}').read_text() == '{"a": 1}'
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_atomic(tmp_path / "c.txt", lambda f: f.write(b"cb")).read_text() == "cb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.txt"]   # no temp left


def test_new_file_mode_follows_umask_and_replaced_file_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        p = write_atomic(tmp_path / "n.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640        # 0o666 & ~0o027, not mkstemp's 0o600
    os.chmod(p, 0o604)
    write_atomic(p, "[]")
    assert stat.S_IMODE(p.stat().st_mode) == 0o604


def test_exception_mid_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"old": true}')

    def dies(f):
        f.write(b'{"new": ')
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError):
        write_atomic(p, dies)
    assert p.read_text() == '{"old": true}'
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_kill_9_mid_write_keeps_the_previous_file(tmp_path):
    """A writer SIGKILLed between writing half its data and the rename: the target is the old file."""
    p = tmp_path / "trace.json"
    p.write_text('{"old": true}')
    code = textwrap.dedent(f"""
        import os, signal
        from parsim.outputs import write_atomic
        def half(f):
            f.write(b'{{"traceEvents": [')
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        write_atomic({str(p)!r}, half)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert json.loads(p.read_text()) == {"old": True}
    temps = [x.name for x in tmp_path.iterdir() if x.name != "trace.json"]
    assert all(t.startswith(".trace.json.") and t.endswith(".tmp") for t in temps), temps   # hidden, not the target


def test_temp_names_are_unpredictable(tmp_path, monkeypatch):
    seen = []
    import parsim.outputs as O
    real = O.tempfile.mkstemp

    def spy(*a, **k):
        fd, name = real(*a, **k)
        seen.append(name)
        return fd, name
    monkeypatch.setattr(O.tempfile, "mkstemp", spy)
    write_atomic(tmp_path / "x.json", "1")
    write_atomic(tmp_path / "x.json", "2")
    tmps = [s for s in seen if s.endswith(".tmp")]
    assert len(tmps) == 2 and tmps[0] != tmps[1] and str(os.getpid()) not in Path(tmps[0]).name


def test_atomic_path_for_path_only_writers(tmp_path):
    with atomic_path(tmp_path / "t.json", JSON) as tmp:
        Path(tmp).write_text("[1]")
        assert not (tmp_path / "t.json").exists()
    assert (tmp_path / "t.json").read_text() == "[1]"


# -- the commands: checked before the work, one line, nothing replaced ------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["predict", "--gpus", "8", "--out", "{d}/missing/x.json"], "missing' does not exist"),
    (["predict", "--gpus", "8", "--out", "/dev/null"], "/dev/null: it exists and is not a regular file"),
    (["plan", "--gpus", "8", "--out", "{d}"], "it is a directory"),
    (["collective", "--gpus", "8", "--plot", "{d}/x.txt"], "--plot {d}/x.txt: unknown file type '.txt'"),
    (["topology", "show", "--draw", "{d}/x.jpg"], "--draw {d}/x.jpg: unknown file type '.jpg'"),
    (["topology", "save", "--out", "{d}/nope/c.yaml"], "nope' does not exist"),
    (["simulate", "--pp", "2", "-m", "4", "--trace", "{d}/t.png"], "--trace {d}/t.png: unknown file type"),
    (["simulate", "--pp", "2", "-m", "4", "--gantt", "{d}/no/g.png"], "no' does not exist"),
])
def test_commands_refuse_bad_output_paths(tmp_path, capsys, argv, needle):
    _one_line_error(capsys, [a.format(d=tmp_path) for a in argv], needle.format(d=tmp_path))


def test_commands_write_through_the_one_writer(tmp_path, capsys):
    assert main(["simulate", "--pp", "2", "-m", "4", "--trace", str(tmp_path / "t.json"),
                 "--gantt", str(tmp_path / "g.svg")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")   # the suffix picks the format
    assert main(["topology", "save", "--cluster", "ps-star", "--out", str(tmp_path / "s.graphml")]) == 0
    assert "<graphml" in (tmp_path / "s.graphml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.svg", "s.graphml", "t.json"]


def test_run_checks_out_before_spawning(tmp_path, capsys, monkeypatch):
    import backends.torchdist.launch as launch_mod
    monkeypatch.setattr(launch_mod, "launch", lambda *a, **k: pytest.fail("spawned before checking --out"))
    _one_line_error(capsys, ["run", "--nproc", "1", "--out", str(tmp_path / "no" / "r.json")], "no' does not exist")
    _one_line_error(capsys, ["run", "--nproc", "1", "--trace", str(tmp_path / "a" / "b")], "a' does not exist")


def _fake_measured():
    """What launch() returns: a StepReport (here a prediction relabelled as measured; no ranks run)."""
    import dataclasses

    from parsim.plan import Plan
    from parsim.predict import predict
    rep = predict("gpt-tiny", "cpu-local", Plan(micro_batch=1, global_batch=1, dtype="fp32"))
    return dataclasses.replace(rep, source="measured")


def test_run_result_is_printed_when_out_fails_after_the_run(tmp_path, capsys, monkeypatch):
    """The directory of --out vanishes during the run: the measurement is still on stdout."""
    import backends.torchdist.launch as launch_mod
    d = tmp_path / "res"
    d.mkdir()

    def launch(*a, **k):
        d.rmdir()
        return _fake_measured()
    monkeypatch.setattr(launch_mod, "launch", launch)
    rc = main(["run", "--nproc", "1", "--format", "json", "--out", str(d / "r.json")])
    cap = capsys.readouterr()
    assert rc == 2
    assert json.loads(cap.out)["measured"]["step_time_s"] == _fake_measured().step_time_s
    assert cap.err.count("\n") == 1 and "res' does not exist" in cap.err and "printed above" in cap.err


@pytest.mark.parametrize("study", ["studies.validation.corpus", "studies.validation.narayanan2021"])
def test_a_study_with_a_bad_out_dir_fails_first_in_one_line(study, tmp_path):
    """The output directory is checked before the work (the corpus study used to compute for 30 s, then
    die with a traceback on a missing directory) and the error is one line, exit 2 (parsim.errors.run_main)."""
    import subprocess
    import sys
    missing = tmp_path / "no" / "such"
    p = subprocess.run([sys.executable, "-m", study, "--out", str(missing)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert lines[0].startswith(f"python -m {study}: error:") and str(missing.parent) in lines[0]
    assert not missing.exists()
