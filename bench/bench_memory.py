"""Memory of a long evaluation stream's frames: all decoded before the first turn, or decoded as the stream
reaches them (what eval.py and the demo do).

Writes a synthetic video of --minutes at 1 fps (--size px, H.264), then measures, each in a fresh process, how much
the process's peak resident memory (VmHWM) grows while a consumer takes the frames two at a time (one turn) at 1 s
per frame:
  read_frames  the whole list decoded first (the old evaluation path), then consumed;
  iter_frames  decoded lazily; only the frames of the current turn (and the decoder's state) are alive.
It also prints what a Streamer keeps per frame when keep_pixels is on (RL needs the pixels again for its update;
evaluation and the demo turn it off), computed from the processed pixels of one frame. The KV cache still grows
with the stream (one slot per token), which this bench does not measure.

    python -m bench.bench_memory --minutes 5 30
"""
import argparse
import itertools
import os
import subprocess
import sys
import tempfile

import numpy as np

from mmduet2.processor import process_images
from mmduet2.video import iter_frames, read_frames
from shapewatch import write_video


def synthetic_video(path, seconds, size):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)
    frames = [np.roll(base, 3 * t, axis=1) for t in range(seconds)]  # a moving texture, one frame a second
    write_video(path, frames, 1)


def grown_mib(mode, path):
    """Peak resident memory of a fresh process consuming the video `mode`-wise, minus what it held before (MiB)."""
    code = (f"import bench.bench_memory as b; before = b.vm('VmRSS'); b.{mode}({path!r}); "
            "print((b.vm('VmHWM') - before) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def vm(field):
    """A memory figure of this process from /proc/self/status, in KiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def all_first(path):
    frames, _ = read_frames(path, 1.0)
    for k in range(0, len(frames), 2):
        frames[k:k + 2]


def lazily(path):
    source = iter_frames(path, 1.0)
    while [f for f, _ in itertools.islice(source, 2)]:
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 30], help="video lengths to measure")
    p.add_argument("--size", type=int, default=240, help="frame height in px (width 4/3 of it)")
    args = p.parse_args()
    frame = np.zeros((args.size, args.size * 4 // 3, 3), np.uint8)
    pv, _ = process_images([frame])
    print(f"one {frame.shape[1]}x{frame.shape[0]} frame: {frame.nbytes / 2 ** 20:.2f} MiB decoded, "
          f"{pv.numel() * pv.element_size() / 2 ** 20:.2f} MiB of pixel_values a Streamer keeps with keep_pixels")
    print(f"{'video':>8} {'frames':>7} {'read_frames MiB':>16} {'iter_frames MiB':>16} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = os.path.join(tmp, f"v{minutes}.mp4")
            synthetic_video(path, int(minutes * 60), args.size)
            eager, lazy = grown_mib("all_first", path), grown_mib("lazily", path)
            print(f"{minutes:>6g} m {int(minutes * 60):>7} {eager:>16.1f} {lazy:>16.1f} {eager / max(lazy, 0.1):>6.0f}")


if __name__ == "__main__":
    main()
