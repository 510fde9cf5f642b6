"""A staging folder left by a killed writer (kill -9 during training) is removed by the next
writer of the same output; one a live process still builds is left alone."""

import os
import signal
import subprocess
import sys

from edge.common.fsutil import StagedDir
from tests.helpers import PIPED, ROOT, edge

HOLD = ("import sys, time; from edge.common.fsutil import StagedDir; "
        "tmp = StagedDir(sys.argv[1]).__enter__(); open(tmp + '/model.onnx', 'wb').write(b'half'); "
        "print(tmp, flush=True); time.sleep(120)")


def hold(out):
    """A process inside `with StagedDir(out)`, as a training is while it writes its bundle."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def partials(parent):
    return sorted(n for n in os.listdir(parent) if ".partial" in n)


def test_the_next_training_removes_a_killed_trainings_partial(tmp_path):
    out = tmp_path / "bundle"
    proc, tmp = hold(out)
    try:
        assert os.path.isdir(tmp) and tmp.endswith(".partial")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert partials(tmp_path) == [os.path.basename(tmp)]        # what kill -9 leaves
        res = edge("train", "--method", "padim", "--data", os.path.join(PIPED, "PA_BDP01_TL"), "--out", out,
                   "--size", "64", "--no-eval")
        assert res.returncode == 0, res.stderr
    finally:
        proc.kill()
    assert partials(tmp_path) == []
    assert os.path.isfile(out / "manifest.yaml") and not os.path.exists(out / StagedDir.LOCK)


def test_a_partial_still_being_written_is_left_alone(tmp_path):
    out = tmp_path / "bundle"
    live, live_tmp = hold(out)
    try:
        with StagedDir(out) as tmp:
            open(os.path.join(tmp, "x"), "w").write("new")
        assert os.path.isdir(live_tmp)                                # the live writer's folder stays
        assert open(out / "x").read() == "new"
    finally:
        live.kill()
        live.wait(timeout=30)
    with StagedDir(out) as tmp:                                       # its writer is dead now
        pass
    assert partials(tmp_path) == []
