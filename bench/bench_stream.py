"""Cost of the streaming engine (mmduet2.stream.Streamer) on a CPU: throughput, per-turn latency, one RL group.

The model is the random "toy" preset with a toy tokenizer (mmduet2.stream.random_toy_model); frames are random
uint8 arrays, 2 per turn, and the question is asked with the first turn. Replies are kept short and realistic by
capping them at StreamConfig(max_new_tokens=4): a turn is one forward over its chunk (frames + template) and at
most 3 one-token forwards. Every figure comes after a warm-up turn. Other jobs on a shared CPU only ever add
time, so each measurement is repeated (--repeats) and the fastest kept. Printed:

  throughput  video frames fed / wall time of a whole --frames video, greedy, batch 1; fastest repeat.
              One row per frame size: 56x56 px (4 visual tokens per frame) and 112x112 (16).
  latency     median and 95th percentile of the per-turn time (ms) over turns 1-10 and over the last 10 turns
              (191-200 of a 400-frame video). Each turn's time is first reduced to its fastest over the repeats,
              which removes other jobs' noise but keeps spikes that happen at the same turn every time (cache
              growth). late/early = the ratio of the medians; a cache that works keeps it near 1.
  RL group    G rows sharing a prefix: prefill a 20-turn context once at batch 1 with forced "NO REPLY" replies,
              Streamer.expand(G), then 10 sampled turns (temperature 1.2, top-k 10, max 4 tokens, fixed seed);
              against G single-row streamers that each prefill the same context and play the same 10 turns
              (row i seeded as expand() seeds row i, so both sample the same tokens up to float round-off).
              The two are timed alternately within each repeat; fastest of each, and their ratio.
  RL step     --prompts groups of G rows on different videos, --step-turns sampled turns each, played group
              after group (as train_rl.py once did) or as one batch (Streamer.concat + step_rows, as it does now).

Run from the repo root: python -m bench.bench_stream [--threads 2] [--frames 400] [--repeats 3]
"""
import argparse
import time

import numpy as np
import torch

from mmduet2.dialogue import NO_REPLY
from mmduet2.processor import process_images
from mmduet2.stream import StreamConfig, Streamer, random_toy_model

QUESTION = "Tell me every time a red shape appears."


def random_video(n, size, seed):
    """n random frames of size x size px, HxWx3 uint8, as a decoder would hand them over."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def tokens_per_frame(model, frame, cfg):
    _, grid = process_images([frame], min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    return int(grid[0].prod()) // model.config.vision.spatial_merge_size ** 2


def stream_video(model, tok, frames, cfg):
    """Play a whole video at batch 1 -> (per-turn seconds, total wall seconds, cache slots at the end)."""
    streamer, times, n = Streamer(model, tok, cfg), [], cfg.frames_per_turn
    start = time.perf_counter()
    for k in range(0, len(frames), n):
        t = time.perf_counter()
        streamer.step(frames[k:k + n], QUESTION if k == 0 else None)
        times.append(time.perf_counter() - t)
    return times, time.perf_counter() - start, streamer.cache.length


def prefill(streamer, frames, context_turns):
    """The shared context: `context_turns` turns whose replies are forced to "NO REPLY"."""
    n = streamer.cfg.frames_per_turn
    for k in range(context_turns):
        streamer.step(frames[k * n:(k + 1) * n], QUESTION if k == 0 else None, reply=NO_REPLY)


def play(streamer, frames, first_turn, turns):
    n = streamer.cfg.frames_per_turn
    for k in range(first_turn, first_turn + turns):
        streamer.step(frames[k * n:(k + 1) * n])


def group_shared(model, tok, frames, cfg, g, context_turns, turns, seed):
    """Prefill once at batch 1, expand to g rows, sample -> (rows, prefill seconds, total seconds)."""
    start = time.perf_counter()
    streamer = Streamer(model, tok, cfg, seed=seed)
    prefill(streamer, frames, context_turns)
    prefilled = time.perf_counter()
    streamer.expand(g)
    play(streamer, frames, context_turns, turns)
    end = time.perf_counter()
    return streamer.rows, prefilled - start, end - start


def group_separate(model, tok, frames, cfg, g, context_turns, turns, seed):
    """g single-row streamers, each prefilling the context itself -> (rows, total seconds)."""
    start, rows = time.perf_counter(), []
    for i in range(g):
        streamer = Streamer(model, tok, cfg, seed=seed + i)  # expand() seeds row i with seed + i
        prefill(streamer, frames, context_turns)
        play(streamer, frames, context_turns, turns)
        rows.append(streamer.rows[0])
    return rows, time.perf_counter() - start


def step_groups(model, tok, videos, cfg, g, turns, seed, together):
    """One RL step's rollouts: a group of g rows per video, played group after group or all groups as one batch
    (Streamer.concat + step_rows) -> (rows, seconds)."""
    start, n = time.perf_counter(), cfg.frames_per_turn
    groups = []
    for j in range(len(videos)):
        s = Streamer(model, tok, cfg, seed=seed + 100 * j)
        s.expand(g)
        groups.append(s)
    if together:
        batch = Streamer.concat(groups)
        for k in range(turns):
            chunks = [v[k * n:(k + 1) * n] for v in videos]
            batch.step_rows([c for c in chunks for _ in range(g)],
                            [QUESTION if k == 0 else None] * len(videos) * g, [None] * len(videos) * g)
        rows = batch.rows
    else:
        for s, v in zip(groups, videos):
            for k in range(turns):
                s.step(v[k * n:(k + 1) * n], QUESTION if k == 0 else None)
        rows = [r for s in groups for r in s.rows]
    return rows, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--frames", type=int, default=400, help="frames per video in the throughput/latency runs")
    p.add_argument("--sizes", type=int, nargs="+", default=[56, 112], help="square frame sizes (px) to stream")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every measurement; the fastest is kept")
    p.add_argument("--window", type=int, default=10, help="turns in the early and late latency windows")
    p.add_argument("--group", type=int, default=4, help="rows G of the RL group")
    p.add_argument("--context-turns", type=int, default=20, help="forced context turns before the group samples")
    p.add_argument("--group-turns", type=int, default=10, help="sampled turns per group row")
    p.add_argument("--prompts", type=int, default=16, help="groups (videos) of the RL step")
    p.add_argument("--step-turns", type=int, default=6, help="turns per video in the RL step")
    p.add_argument("--seed", type=int, default=0, help="seed of the frames and of the group's samplers")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"config: {vars(args)}")
    run_start = time.perf_counter()

    # ---------------------------------------------------------------------------------------------- setup
    model, tok = random_toy_model(QUESTION)  # random toy weights, seeded inside
    greedy = StreamConfig(frames_per_turn=2, max_new_tokens=4)
    sampled = StreamConfig(frames_per_turn=2, max_new_tokens=4, temperature=1.2, top_k=10)
    n_turns = args.frames // greedy.frames_per_turn
    w = min(args.window, n_turns)

    # ------------------------------------------------------------------- throughput and per-turn latency
    rows = []
    for size in args.sizes:
        frames = random_video(args.frames, size, args.seed)
        stream_video(model, tok, frames[:greedy.frames_per_turn], greedy)  # warm-up turn
        runs = [stream_video(model, tok, frames, greedy) for _ in range(args.repeats)]
        per_turn = np.min([r[0] for r in runs], axis=0) * 1e3  # (turns,) ms, fastest over repeats
        early, late = per_turn[:w], per_turn[-w:]
        rows.append((size, tokens_per_frame(model, frames[0], greedy), args.frames / min(r[1] for r in runs),
                     np.median(early), np.percentile(early, 95), np.median(late), np.percentile(late, 95),
                     runs[0][2]))
        print(f"{size}x{size}: {args.repeats} runs of {args.frames} frames took "
              + ", ".join(f"{r[1]:.1f}" for r in runs) + " s", flush=True)

    late_label = f"turns {n_turns - w + 1}-{n_turns}"
    print(f"\nStreaming, batch 1, greedy, {greedy.frames_per_turn} frames/turn, <= {greedy.max_new_tokens} tokens "
          f"per reply, {args.frames} frames = {n_turns} turns, {args.threads} threads (per-turn ms: fastest of "
          f"{args.repeats} repeats per turn)")
    print(f"{'frame':>9}{'tok/frame':>11}{'frames/s':>10}{f'turns 1-{w} p50':>16}{'p95':>8}"
          f"{late_label + ' p50':>20}{'p95':>8}{'late/early':>12}{'cache slots':>13}")
    for size, tpf, fps, e50, e95, l50, l95, slots in rows:
        print(f"{f'{size}x{size}':>9}{tpf:11d}{fps:10.1f}{e50:16.1f}{e95:8.1f}{l50:20.1f}{l95:8.1f}"
              f"{l50 / e50:12.2f}{slots:13d}")

    # ------------------------------------------------------------------------------------- one RL group
    g, ctx, turns = args.group, args.context_turns, args.group_turns
    frames = random_video((ctx + turns) * sampled.frames_per_turn, 56, args.seed + 1)
    warm = Streamer(model, tok, sampled, seed=args.seed)  # warm-up: one context turn, one batch-g turn
    prefill(warm, frames, 1)
    warm.expand(g)
    play(warm, frames, 1, 1)
    shared, separate = [], []
    for _ in range(args.repeats):  # alternate so that a burst of other jobs' load hits both alike
        shared.append(group_shared(model, tok, frames, sampled, g, ctx, turns, args.seed))
        separate.append(group_separate(model, tok, frames, sampled, g, ctx, turns, args.seed))
    best_shared = min(shared, key=lambda r: r[2])
    best_separate = min(r[1] for r in separate)
    same = sum(a.ids == b.ids for a, b in zip(shared[0][0], separate[0][0]))
    print(f"\nRL group: G={g}, {ctx} forced context turns then {turns} sampled turns (T={sampled.temperature}, "
          f"top-k {sampled.top_k}, <= {sampled.max_new_tokens} tokens), 56x56 frames, fastest of {args.repeats}")
    print(f"{'':32}{'seconds':>9}")
    print(f"{'shared prefix: prefill once':32}{best_shared[1]:9.2f}")
    print(f"{f'shared prefix: expand + {turns} turns':32}{best_shared[2] - best_shared[1]:9.2f}")
    print(f"{'shared prefix: total':32}{best_shared[2]:9.2f}")
    print(f"{f'{g} separate single-row streamers':32}{best_separate:9.2f}")
    print(f"{'separate / shared':32}{best_separate / best_shared[2]:9.2f}")
    print(f"rows whose every token matches its single-row run: {same}/{g}")

    # ------------------------------------------------------------------- one RL step: many groups, one batch
    videos = [random_video(args.step_turns * sampled.frames_per_turn, 56, args.seed + 10 + j)
              for j in range(args.prompts)]
    apart, together = [], []
    for _ in range(args.repeats):
        apart.append(step_groups(model, tok, videos, sampled, g, args.step_turns, args.seed, together=False))
        together.append(step_groups(model, tok, videos, sampled, g, args.step_turns, args.seed, together=True))
    t_apart, t_together = min(r[1] for r in apart), min(r[1] for r in together)
    same = sum(a.ids == b.ids for a, b in zip(apart[0][0], together[0][0]))
    print(f"\nRL step: {args.prompts} videos x G={g} rows, {args.step_turns} sampled turns each, fastest of "
          f"{args.repeats}")
    print(f"{'groups one after another':32}{t_apart:9.2f}")
    print(f"{'all groups in one batch':32}{t_together:9.2f}")
    print(f"{'apart / together':32}{t_apart / t_together:9.2f}")
    print(f"rows whose every token matches the group-by-group run: {same}/{len(apart[0][0])}")
    print(f"\ntotal run time {time.perf_counter() - run_start:.0f} s")


if __name__ == "__main__":
    main()
