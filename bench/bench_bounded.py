"""Endless streams: the full KV cache against the bounded one (StreamConfig.window) over a long stream.

The random "toy" model (mmduet2.stream.random_toy_model) watches --turns turns of 2 random 56x56 frames (4 visual
tokens each), the question on turn 1, greedy, at most 4 tokens a reply, at batch 1. Each mode runs in a fresh
process, so its peak resident memory (VmHWM) is its own. Printed per mode: cache slots in use (and allocated) and
the peak resident memory after the first --early turns and at the end, and the per-turn p50 (ms) over the first
and the last --early turns with their ratio. With the bounded cache the slots, the memory and the per-turn time
should stop growing once the window and the text budget have filled (the first few dozen turns); the full cache
grows with the stream.

    python -m bench.bench_bounded [--turns 3000] [--window 16] [--text-budget 512]
"""
import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from mmduet2.stream import StreamConfig, Streamer, random_toy_model

QUESTION = "Tell me every time a red shape appears."


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run(turns, window, text_budget, early, seed):
    """One stream in this process -> dict of the figures main prints."""
    torch.set_num_threads(1)
    model, tok = random_toy_model(QUESTION)
    cfg = StreamConfig(frames_per_turn=2, max_new_tokens=4, keep_pixels=False, window=window, text_budget=text_budget)
    streamer, rng, times, out = Streamer(model, tok, cfg), np.random.default_rng(seed), [], {}
    for k in range(turns):
        frames = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(2)]
        t = time.perf_counter()
        streamer.step(frames, QUESTION if k == 0 else None)
        times.append(time.perf_counter() - t)
        if k + 1 == early:
            out["early"] = (streamer.cache.length, streamer.cache.capacity, vm_hwm_mib())
    out["late"] = (streamer.cache.length, streamer.cache.capacity, vm_hwm_mib())
    ms = np.array(times) * 1e3
    out["p50"] = (float(np.median(ms[:early])), float(np.median(ms[-early:])))
    out["seconds"] = float(ms.sum() / 1e3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=3000, help="turns (2 frames each) to stream")
    p.add_argument("--window", type=float, default=16.0, help="bounded cache: seconds of frames kept (1 s a frame)")
    p.add_argument("--text-budget", type=int, default=512, help="bounded cache: tokens of earlier turns' text kept")
    p.add_argument("--early", type=int, default=100, help="turns in the first and the last latency window")
    p.add_argument("--seed", type=int, default=0, help="seed of the frames")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode ("full" or "bounded"), print JSON
    args = p.parse_args()
    if args.one:
        window = args.window if args.one == "bounded" else 0.0
        print(json.dumps(run(args.turns, window, args.text_budget, min(args.early, args.turns), args.seed)))
        return
    print(f"config: {vars(args)}")
    rows = {}
    for mode in ("full", "bounded"):
        cmd = [sys.executable, "-m", "bench.bench_bounded", "--one", mode] + sys.argv[1:]
        rows[mode] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split("\n")[-2])
        print(f"{mode}: {rows[mode]['seconds']:.0f} s", flush=True)
    e = min(args.early, args.turns)
    print(f"\n{args.turns} turns of 2 frames (56x56, 4 tokens each), toy model, greedy, <= 4 tokens a reply, 1 thread; "
          f"bounded: window {args.window:g} s, text budget {args.text_budget} tokens")
    print(f"{'cache':>8}{f'slots @{e}':>12}{'slots end':>11}{'alloc end':>11}{f'peak MiB @{e}':>15}{'peak MiB end':>14}"
          f"{f'p50 ms 1-{e}':>13}{'p50 ms last':>13}{'late/early':>12}")
    for mode, r in rows.items():
        (s0, _, m0), (s1, c1, m1), (p0, p1) = r["early"], r["late"], r["p50"]
        print(f"{mode:>8}{s0:12d}{s1:11d}{c1:11d}{m0:15.1f}{m1:14.1f}{p0:13.2f}{p1:13.2f}{p1 / p0:12.2f}")


if __name__ == "__main__":
    main()
