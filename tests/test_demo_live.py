"""The demo on a live source: a writer thread feeds raw frames into a FIFO at a camera's pace, the demo samples them
by the wall clock (demo.LiveFrames) and stops at --seconds, at the source's end, or on Ctrl-C (SIGINT).

Timing on a shared CPU is loose, so the tests assert what holds at any speed: replies come with their stream times,
every sample is either taken or counted as dropped, and the outputs are written whole."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from demo import LiveFrames, main

QUESTION = "Tell me every time a red shape appears."
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FPS = 64, 20
RAW = ["--format", "rawvideo", "--av-option", f"video_size={SIZE}x{SIZE}", "--av-option", "pixel_format=rgb24",
       "--av-option", f"framerate={FPS}"]
REPLY = re.compile(r"^\[\s*(\d+\.\d)s\] ", re.M)
SUMMARY = re.compile(r"(\d+) replies in (\d+) s of video, (\d+) frames dropped")


@pytest.fixture
def camera(tmp_path):
    """A FIFO that a writer thread fills with raw rgb24 frames at FPS frames a second until the test ends or the
    reader goes away."""
    path, stop = str(tmp_path / "camera"), threading.Event()
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as f:  # blocks until the reader opens the FIFO
                for k in range(100_000):
                    if stop.is_set():
                        return
                    f.write(np.full((SIZE, SIZE, 3), (7 * k) % 256, dtype=np.uint8).tobytes())
                    f.flush()
                    time.sleep(1 / FPS)
        except BrokenPipeError:  # the reader went away
            pass

    threading.Thread(target=feed, daemon=True).start()
    yield path
    stop.set()


def test_live_frames_keep_the_newest_and_count_the_dropped(camera):
    live = LiveFrames(camera, 0.05, keep=2, format="rawvideo",
                      options={"video_size": f"{SIZE}x{SIZE}", "pixel_format": "rgb24", "framerate": str(FPS)})
    turns = live.turns(2)
    first, _ = next(turns)
    assert 1 <= len(first) <= 2 and all(f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for f in first)
    time.sleep(1.0)  # a slow model: about 20 samples arrive, only the newest 2 are kept
    second, t = next(turns)
    assert 1 <= len(second) <= 2 and live.dropped > 0
    assert round(t / 0.05) == len(first) + len(second) + live.dropped  # each sample so far: taken or dropped


def test_demo_live_stops_at_seconds(camera, tmp_path, capsys):
    out = tmp_path / "replies.json"
    main([camera, "--live", *RAW, "--question", QUESTION, "--frame-interval", "0.2", "--seconds", "1.5",
          "--max-new-tokens", "2", "--device", "cpu", "--timeline", str(tmp_path / "t.png"), "--replies", str(out)])
    captured = capsys.readouterr()
    assert "RANDOM" in captured.err
    replies = json.loads(out.read_text())
    times = [float(t) for t in REPLY.findall(captured.out)]
    assert times and times == [round(r["time"], 1) for r in replies] and times == sorted(times)
    assert all(abs(t / 0.2 - round(t / 0.2)) < 1e-6 for t in times)  # stamped on the frame grid
    n, seconds, dropped = map(int, SUMMARY.search(captured.out).groups())
    assert n == len(replies) and seconds >= 1 and dropped >= 0
    with Image.open(tmp_path / "t.png") as im:
        assert im.format == "PNG"


def test_demo_live_ctrl_c_exits_cleanly_and_writes_the_timeline(camera, tmp_path):
    out, err = tmp_path / "replies.json", open(tmp_path / "stderr", "w")
    proc = subprocess.Popen([sys.executable, "demo.py", camera, "--live", *RAW, "--question", QUESTION,
                             "--frame-interval", "0.2", "--max-new-tokens", "2", "--device", "cpu",
                             "--timeline", str(tmp_path / "t.png"), "--replies", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                            # as from a terminal: a job a non-interactive shell runs in the background (CI) starts
                            # with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        while not REPLY.match(lines.get(timeout=60)):  # the first reply: the demo is streaming
            pass
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert "Ctrl-C" in (tmp_path / "stderr").read_text()
    assert len(json.loads(out.read_text())) >= 1
    with Image.open(tmp_path / "t.png") as im:
        assert im.format == "PNG"
