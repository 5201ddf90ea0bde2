"""Progress: a bar with rate and ETA on a terminal, plain log lines elsewhere.

The terminal case runs a real child process on a pseudo-terminal (``pty``), so ``isatty`` is
true for real, not patched.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from omnifer.runtime.progress import Meter, track

REPO = Path(__file__).resolve().parents[1]


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "omnifer.progress"]


def test_log_lines_carry_count_rate_and_eta(caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIFER_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="omnifer.progress")
    seen = []
    for item in track(range(5), "crunch", unit="img", log_every_s=0.0):
        seen.append(item)
        time.sleep(0.01)
    assert seen == [0, 1, 2, 3, 4]
    lines = _messages(caplog)
    assert lines[0].startswith("crunch: 1/5 img (") and "img/s" in lines[0]
    eta = re.search(r"eta (\d+)s", lines[0])
    assert eta is not None, lines[0]
    assert any(line.startswith("crunch: 4/5 img") for line in lines)
    assert re.fullmatch(r"crunch: done, 5 img in \d+\.\ds", lines[-1]), lines[-1]


def test_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIFER_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="omnifer.progress")
    list(track(range(1000), "fast", log_every_s=60.0))
    assert _messages(caplog) == [m for m in _messages(caplog) if "done" in m]
    assert len(_messages(caplog)) == 1 and "done, 1000 it" in _messages(caplog)[0]


def test_meter_counts_advances_and_reports_done_after_an_early_exit(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIFER_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="omnifer.progress")
    with pytest.raises(RuntimeError), Meter("shards", total=100, unit="img") as meter:
        meter.advance(16)
        meter.advance(16)
        raise RuntimeError("a worker died")
    assert meter.done == 32
    assert "shards: done, 32 img" in _messages(caplog)[-1]
    caplog.clear()
    for i in track(range(10), "loop", log_every_s=60.0):
        if i == 3:
            break
    assert "loop: done, 3 it" in _messages(caplog)[-1]


SNIPPET = (
    "import time\n"
    "from omnifer.runtime.progress import track\n"
    "for _ in track(range(20), 'bar-demo', unit='img'):\n"
    "    time.sleep(0.02)\n"
)


def _run_on_a_terminal(env: dict[str, str], code: str = SNIPPET) -> str:
    """Run ``code`` with stdout/stderr on a pseudo-terminal; return what the terminal got."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=env, cwd=REPO)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


def test_a_terminal_gets_a_bar_with_rate_and_eta() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMNIFER_PROGRESS"}
    env.update(TERM="xterm-256color", COLUMNS="120")
    out = _run_on_a_terminal(env)
    assert "bar-demo" in out and "20/20" in out, out
    assert re.search(r"\d+\.\d img/s", out), out
    assert "━" in out  # the bar itself
    assert re.search(r"\d:\d\d:\d\d", out), out  # elapsed / remaining time columns


def test_a_terminal_gets_log_lines_when_asked() -> None:
    env = {**os.environ, "OMNIFER_PROGRESS": "log", "TERM": "xterm-256color"}
    out = _run_on_a_terminal(env, "import logging; logging.basicConfig(level='INFO')\n"
                             + SNIPPET)
    assert "bar-demo: done, 20 img" in out and "━" not in out, out


def test_training_reports_progress_per_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_model (and so ``omnifer train`` and ``omnifer retrain``) goes through track."""
    from omnifer.labeled import LabeledData
    from omnifer.training.config import TrainConfig
    from omnifer.training.train import train_model

    monkeypatch.setenv("OMNIFER_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="omnifer.progress")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 16, 16, 3)).astype(np.uint8)
    data = LabeledData(images, np.arange(24) % 3, ("a", "b", "c"),
                       [f"{i}.png" for i in range(24)], source="noise")
    cfg = TrainConfig(arch="fercnn_tiny", input_size=16, epochs=3, batch_size=8, seed=0,
                      patience=0, threads=1)
    train_model(data, cfg, tmp_path / "m")
    assert any(re.fullmatch(r"train: done, 3 epoch in \d+\.\ds", m) for m in _messages(caplog))
