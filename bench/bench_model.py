"""Per-turn cost of streaming: the KV cache against recomputing the prefix, and against transformers' own cache.

One turn = 2 frames of 112x112 px (16 tokens each) plus template text, then 4 decoded tokens fed one at a time,
as the streaming engine runs it (docs/method.md section 1). Printed per preset at turns 1, 32 and 128 (fastest of
that turn and the four before it, of turns 1-5 for turn 1, since other jobs on a shared CPU only ever add
time; milliseconds, after a 2-turn warm-up):
  cached      mmduet2 with one KVCache kept across turns (chunk + 4 one-token steps)
  hf-cache    transformers' Qwen2_5_VLForConditionalGeneration with a DynamicCache on the same weights, fed only
              the new tokens and pixels (M-RoPE ids passed explicitly: its own rope_deltas ignore new images)
  recompute   no cache: every forward re-reads the whole dialogue, frames included. One full forward is timed
              and counted 5 times (the chunk and the 4 decoded tokens each need one over ~the same length).
Goals: late turns within 1.5x of early ones, >= 10x cheaper than recompute at turn 128, no slower than hf-cache.
Run from the repo root: python -m bench.bench_model [--turns 128] [--presets toy small] [--no-hf]
"""
import argparse
import tempfile
import time

import torch

from mmduet2.config import preset
from mmduet2.model import MMDuet2, get_rope_index

FRAMES, DECODED = 2, 4


def turn_chunk(cfg, first):
    """Token ids of one user chunk (template text around 2 frames) with the pixels of its frames."""
    frame = [cfg.vision_start_token_id] + [cfg.image_token_id] * 16 + [cfg.vision_end_token_id]
    head = list(range(1, 13)) if first else [1, 2]  # a short stand-in for the system prompt on the first turn
    ids = head + [3, 4, 5] + frame * FRAMES + [6, 7, 8, 9, 10, 11]
    return ids, torch.randn(FRAMES * 64, 3 * 2 * 14 * 14), torch.tensor([[1, 8, 8]] * FRAMES)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@torch.no_grad()
def run_cached(model, turns):
    cache, times, decoded = model.new_cache(1), [], []
    for k in range(turns):
        ids, pv, grid = turn_chunk(model.config, k == 0)

        def turn():
            logits = model(torch.tensor([ids]), pixel_values=pv, image_grid_thw=grid, cache=cache, logits_to_keep=1)
            for _ in range(DECODED):
                decoded.append(logits[:, -1].argmax(-1, keepdim=True))
                logits = model(decoded[-1], cache=cache)
        times.append(timed(turn)[1])
    return times, cache.length, torch.cat(decoded)


@torch.no_grad()
def run_hf(hf, cfg, turns):
    from transformers import DynamicCache
    cache, times, next_pos, decoded = DynamicCache(config=hf.config), [], torch.zeros(1, dtype=torch.long), []
    for k in range(turns):
        ids, pv, grid = turn_chunk(cfg, k == 0)

        def turn():
            nonlocal next_pos
            x = torch.tensor([ids])
            pos, next_pos = get_rope_index(cfg, x, grid, start=next_pos)
            logits = hf(input_ids=x, pixel_values=pv, image_grid_thw=grid, position_ids=pos, cache=cache,
                        use_cache=True, logits_to_keep=1).logits
            for _ in range(DECODED):
                tok = logits[:, -1].argmax(-1, keepdim=True)
                decoded.append(tok)
                logits = hf(input_ids=tok, position_ids=next_pos.view(1, 1, 1).expand(3, 1, 1), cache=cache,
                            use_cache=True).logits
                next_pos = next_pos + 1
        times.append(timed(turn)[1])
    return times, torch.cat(decoded)


@torch.no_grad()
def recompute_turn(model, turn):
    """One uncached forward over the dialogue up to and including `turn` (1-based), times (1 + DECODED)."""
    chunks = [turn_chunk(model.config, k == 0) for k in range(turn)]
    ids = sum((c[0] + [1] * DECODED for c in chunks), [])
    pv, grid = torch.cat([c[1] for c in chunks]), torch.cat([c[2] for c in chunks])
    return timed(lambda: model(torch.tensor([ids]), pixel_values=pv, image_grid_thw=grid))[1] * (1 + DECODED)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=128, help="turns to stream (checkpoints at 1, 32 and this)")
    p.add_argument("--presets", nargs="+", default=["toy", "small"], help="model presets to measure")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = sorted({t for t in (1, 32, args.turns) if t <= args.turns})
    rows = []
    for name in args.presets:
        torch.manual_seed(0)
        model = MMDuet2(preset(name)).eval()
        run_cached(model, 2)  # warm-up: first calls pay for kernel selection and allocation
        torch.manual_seed(1)
        times, length, decoded = run_cached(model, args.turns)
        hf_times = None
        if not args.no_hf:
            try:
                from transformers import Qwen2_5_VLForConditionalGeneration
                with tempfile.TemporaryDirectory() as d:
                    model.save_pretrained(d)
                    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, attn_implementation="sdpa").eval()
                run_hf(hf, model.config, 2)
                torch.manual_seed(1)  # the same random frames
                hf_times, hf_decoded = run_hf(hf, model.config, args.turns)
                print(f"{name}: hf-cache decoded the same greedy tokens at "
                      f"{int((hf_decoded == decoded).sum())}/{len(decoded)} steps")
            except ImportError:
                print("transformers not installed: skipping hf-cache")
        for t in checkpoints:
            window = slice(max(0, t - 5), max(t, 5))  # turn 1: turns 1-5
            ours = min(times[window]) * 1e3
            hf_ms = min(hf_times[window]) * 1e3 if hf_times else float("nan")
            rec = recompute_turn(model, t) * 1e3
            rows.append((name, t, ours, hf_ms, rec))
        print(f"{name}: cache length after {args.turns} turns = {length} slots", flush=True)
    print(f"\n{'preset':8}{'turn':>6}{'cached ms':>12}{'hf-cache ms':>13}{'recompute ms':>14}"
          f"{'recompute/cached':>18}{'hf/cached':>11}{'turn/turn1':>12}")
    first = {}
    for name, t, ours, hf_ms, rec in rows:
        first.setdefault(name, ours)
        print(f"{name:8}{t:6d}{ours:12.1f}{hf_ms:13.1f}{rec:14.1f}{rec / ours:18.1f}{hf_ms / ours:11.2f}"
              f"{ours / first[name]:12.2f}")


if __name__ == "__main__":
    main()
