"""One-shot check for the first session with a GPU (one H100 / H200; a few minutes, at most 8): Qwen2.5-VL-3B's
shapes with random weights, printed as one table and written as JSON (--out) for the README and docs/scaling.md.

  stream mmduet2       the Streamer (mmduet2/stream.py), bf16: 100 turns of one 224x448 frame each (128 visual
                       tokens), the question on turn 1, greedy, at most 4 tokens a reply; per-turn p50 / p95 ms
                       (frame preprocessing included), frames per second, peak GPU memory
  stream transformers  transformers' Qwen2_5_VLForConditionalGeneration with a DynamicCache on the same weights,
                       fed the same chunks, pixels and decoding (M-RoPE ids passed explicitly, as bench.bench_model),
                       when transformers is importable
  LoRA RL update       train_rl.py's update of one 100-turn trajectory (~14k tokens, 3-4 sampled a turn): fp32
                       weights, LoRA r=64 on every decoder linear, bf16 autocast, gradient checkpointing, logits only
                       where a sampled token is predicted, PPO loss, AdamW step; peak memory, the second step's seconds,
                       beside docs/scaling.md's worked estimate for the update (22.2 GB; 26 GB with the KV cache of
                       a G = 4 rollout group)

`--chain` measures instead what the project promises a user with one GPU: the default toy chain, `python
train_sft.py && python train_rl.py && python eval.py` with `--device`, wall seconds per stage (the SFT stage
includes generating ShapeWatch when data/toy is missing) and the eval's table. It is a call of its own, since on
a GPU it may take longer than the rows above.

Peak memory is torch's max_memory_allocated over the row (only that row's model is resident); on the CPU it is
the process's peak resident set so far. Random weights decode arbitrary tokens, which costs what real ones would.

    python -m bench.gpu_check [--out gpu_check.json] [--tokenizer DIR]
    python -m bench.gpu_check --tiny --device cpu    # toy shapes, 6 turns, seconds (tests/test_bench.py)
    python -m bench.gpu_check --chain [--out chain.json]
    python -m bench.gpu_check --chain --tiny --device cpu    # a 14-video dataset and a few steps
"""
import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.presets_roundtrip import QUESTION, peak_rss_gb, tokenizer_and_config
from mmduet2 import grpo
from mmduet2.checkpoint import write_json
from mmduet2.dialogue import Turn, render_dialogue, user_chunk_ids
from mmduet2.lora import apply_lora
from mmduet2.model import MMDuet2, get_rope_index
from mmduet2.processor import process_images
from mmduet2.stream import StreamConfig, Streamer, unsayable_ids
from mmduet2.training import autocast, loss_positions
from shapewatch import ensure_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME = (224, 448)  # px; at max_pixels = 128 * 28 * 28 it stays this size: 8 x 16 merged tokens
MAX_NEW = 4
TEMPERATURE = 1.2  # train_rl.py's sampling temperature; the update's log-probs use it too
UPDATE_ESTIMATE_GB = 22.2  # docs/scaling.md: 15.0 weights + 1.5 LoRA and AdamW + 4.1 + 1.2 activations + 0.4 logits


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def start_row(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device):
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else peak_rss_gb()


def stream_row(name, times, peak):
    ms = np.array(times) * 1e3
    return {"row": name, "turns": len(times), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "frames_per_s": len(times) / float(np.sum(times)), "peak_gb": peak}


def stream_ours(model, tok, frames, device):
    """Per-turn seconds of the Streamer over `frames` (one a turn), and the tokens it decoded each turn."""
    cfg = StreamConfig(frames_per_turn=1, max_new_tokens=MAX_NEW, keep_pixels=False)
    Streamer(model, tok, cfg).step(frames[:1], QUESTION)  # warm-up: kernel selection, allocator
    start_row(device)
    streamer, times = Streamer(model, tok, cfg), []
    for k, frame in enumerate(frames):
        t = time.perf_counter()
        streamer.step([frame], QUESTION if k == 0 else None)
        sync(device)
        times.append(time.perf_counter() - t)
    row = streamer.rows[0]
    decoded, run = [], []
    for token, sampled in zip(row.ids + [None], row.sampled + [False]):  # runs of sampled tokens, one per turn
        if sampled:
            run.append(token)
        elif run:
            decoded, run = decoded + [run], []
    return stream_row("stream mmduet2", times, peak_gb(device)), decoded


@torch.no_grad()
def stream_transformers(hf, cfg, tok, frames, device):
    """The same turns through transformers' model and cache: the chunk with the previous reply's last token(s) in
    front, as the Streamer feeds it, then greedy decoding of up to MAX_NEW tokens with the same banned ids."""
    from transformers import DynamicCache
    cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"  # 5.x / 4.x
    banned = unsayable_ids(tok, cfg.text.vocab_size).to(device)
    end = tok.im_end_id

    def run(frames):
        try:
            cache = DynamicCache(config=hf.config)
        except TypeError:  # transformers 4.x
            cache = DynamicCache()
        next_pos, pending, times, decoded = torch.zeros(1, dtype=torch.long), [], [], []
        for k, frame in enumerate(frames):
            t = time.perf_counter()
            pv, grid = process_images([frame], max_pixels=StreamConfig.max_pixels)
            x = torch.tensor([pending + user_chunk_ids(tok, k == 0, 1, int(grid[0].prod()) // 4,
                                                       QUESTION if k == 0 else None)])
            pos, next_pos = get_rope_index(cfg, x, grid, start=next_pos)
            logits = hf(input_ids=x.to(device), pixel_values=pv.to(device, torch.bfloat16),
                        image_grid_thw=grid.to(device), position_ids=pos.to(device), use_cache=True,
                        logits_to_keep=1, **{cache_arg: cache}).logits
            out = []
            for n in range(MAX_NEW):
                token = int(logits[0, -1].index_fill(-1, banned, float("-inf")).argmax())
                out.append(token)
                if token == end or n == MAX_NEW - 1:
                    break
                logits = hf(input_ids=torch.tensor([[token]], device=device), use_cache=True,
                            position_ids=next_pos.view(1, 1, 1).expand(3, 1, 1).to(device), **{cache_arg: cache}).logits
                next_pos = next_pos + 1
            pending = out[-1:] + ([end] if out[-1] != end else [])  # a capped reply is closed with <|im_end|>
            sync(device)
            times.append(time.perf_counter() - t)
            decoded.append(out)
        return times, decoded

    run(frames[:1])  # warm-up
    start_row(device)
    times, decoded = run(frames)
    return stream_row("stream transformers", times, peak_gb(device)), decoded


def lora_update(cfg, tok, frames, device, rank):
    """Two update steps of one trajectory with every turn's reply `NO REPLY` (sampled), as train_rl.py runs them."""
    start_row(device)
    model = MMDuet2.random(cfg, dtype=torch.float32, device=device)
    apply_lora(model, rank=rank, alpha=32.0)
    model.model.gradient_checkpointing = True
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]  # the adapters: apply_lora froze the rest
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    gcfg = grpo.GRPOConfig()
    pixel_values, grid = process_images(frames, max_pixels=StreamConfig.max_pixels)
    ids, mask = render_dialogue(tok, [Turn(float(k + 1), [k + 1], QUESTION if k == 0 else None)
                                      for k in range(len(frames))], int(grid[0].prod()) // 4)
    inputs = dict(input_ids=ids[None].to(device), pixel_values=pixel_values.to(device), image_grid_thw=grid.to(device))
    mask = mask[None].to(device)
    banned = unsayable_ids(tok, cfg.text.vocab_size)
    times = []
    for _ in range(2):  # the first step also allocates AdamW's moments and picks kernels
        t = time.perf_counter()
        with autocast(device):
            pos = loss_positions(mask)
            logp = grpo.token_logprobs(model(**inputs, logits_to_keep=pos), inputs["input_ids"], TEMPERATURE,
                                       pos, banned)
        loss, _ = grpo.ppo_loss(logp, logp.detach(), torch.ones(1, device=device), mask, gcfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
    return {"row": "LoRA RL update", "tokens": ids.numel(), "sampled": int(mask.sum()), "step_s": times[-1],
            "peak_gb": peak_gb(device), "lora_params_m": sum(p.numel() for p in params) / 1e6}


def toy_chain(device, tiny):
    """The default toy chain with --device, each stage a fresh process: [{"row", "wall_s"}], and eval's table.
    With tiny, a 14-video dataset in a scratch folder and a few steps of each stage."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        sft, rl, ev = (os.path.join(d, n) for n in ("sft", "rl", "eval"))
        data, gold = [], []  # the default chain: data/toy, generated by train_sft.py when missing
        if tiny:
            folder = ensure_toy_data(os.path.join(d, "data"), train=6, val=4, test=4, log=None)
            data = ["--data", folder]
            gold = ["--gold", os.path.join(folder, "test_proactive.json"), "--video-root", folder]
        few = {"sft": ["--steps", "4", "--batch-size", "2", "--eval-every", "2", "--save-every", "2", "--warmup", "1"],
               "rl": ["--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "2",
                      "--eval-examples", "2", "--max-new-tokens", "6"],
               "eval": ["--max-new-tokens", "6"]} if tiny else {}
        stages = [("sft", ["train_sft.py", *data, "--out", sft]),
                  ("rl", ["train_rl.py", *data, "--sft", sft, "--out", rl]),
                  ("eval", ["eval.py", "--checkpoint", f"sft={sft}", "--checkpoint", f"rl={rl}", *gold, "--out", ev])]
        for name, cmd in stages:
            cmd = [sys.executable, *cmd, *few.get(name, []), "--device", device.type]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd[1:])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            rows.append({"row": f"toy {name}", "wall_s": time.perf_counter() - t})
    return rows, proc.stdout


def print_table(rows, estimate):
    cols = [("turns", "turns", "{:d}"), ("p50_ms", "p50 ms", "{:.1f}"), ("p95_ms", "p95 ms", "{:.1f}"),
            ("frames_per_s", "frames/s", "{:.1f}"), ("tokens", "tokens", "{:d}"), ("step_s", "step s", "{:.2f}"),
            ("peak_gb", "peak GB", "{:.2f}"), ("wall_s", "wall s", "{:.0f}")]
    print(f"{'row':<22}" + "".join(f"{title:>10}" for _, title, _ in cols) + f"{'estimate GB':>13}")
    for r in rows:
        cells = "".join(f"{fmt.format(r[k]) if k in r else '-':>10}" for k, _, fmt in cols)
        est = f"{estimate:.1f}" if r["row"] == "LoRA RL update" and estimate else "-"
        print(f"{r['row']:<22}{cells}{est:>13}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy shapes and 6 turns (seconds on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--turns", type=int, help="turns streamed, and turns in the update's trajectory (default 100; "
                                             "with --tiny 6)")
    p.add_argument("--lora-rank", type=int, default=64, help="LoRA rank of the update")
    p.add_argument("--tokenizer", help="folder with a Qwen2.5-VL tokenizer.json (default: a toy tokenizer whose "
                                       "special-token ids the config adopts; the shapes stay Qwen's)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers row")
    p.add_argument("--chain", action="store_true", help="only the default toy chain on --device, seconds per stage")
    p.add_argument("--out", help="write the figures as JSON here too")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    if args.chain:
        print(f"the default toy chain{' (tiny)' if args.tiny else ''} on {machine}, torch {torch.__version__}",
              flush=True)
        rows, table = toy_chain(device, args.tiny)
        print(table)
        print_table(rows, None)
        if args.out:
            write_json(args.out, {"machine": machine, "torch": torch.__version__, "chain": "tiny" if args.tiny else
                                  "default", "rows": rows, "eval_table": table})
            print(f"wrote {args.out}")
        return
    turns = args.turns or (6 if args.tiny else 100)
    tok, cfg = tokenizer_and_config("qwen2.5-vl-3b", args.tokenizer, args.tiny)
    print(f"{'toy' if args.tiny else 'qwen2.5-vl-3b'} shapes, random weights, {turns} turns, {machine}, "
          f"torch {torch.__version__}", flush=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(turns)]
    t0 = time.perf_counter()

    # ---- streaming: mmduet2, then transformers on the same weights ----------------------------------------
    torch.manual_seed(0)
    model = MMDuet2.random(cfg, dtype=torch.bfloat16, device=device).eval()
    row, ours_decoded = stream_ours(model, tok, frames, device)
    rows = [row]
    try:
        from transformers import Qwen2_5_VLForConditionalGeneration
    except ImportError:
        args.no_hf = True
        print("transformers not importable: no transformers row")
    if not args.no_hf:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d, max_shard_size=2 * 10 ** 9)
            del model
            start_row(device)
            hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, attn_implementation="sdpa")
        hf = hf.to(device, torch.bfloat16).eval()
        row, hf_decoded = stream_transformers(hf, cfg, tok, frames, device)
        row["same_tokens_turns"] = sum(a == b for a, b in zip(ours_decoded, hf_decoded))
        rows.append(row)
        del hf
    else:
        del model

    # ---- one LoRA RL update -------------------------------------------------------------------------------
    rows.append(lora_update(cfg, tok, frames, device, args.lora_rank))
    print()
    estimate = None if args.tiny else UPDATE_ESTIMATE_GB
    print_table(rows, estimate)
    if len(rows) == 3:
        print(f"transformers decoded the same greedy tokens as mmduet2 on {rows[1]['same_tokens_turns']} of "
              f"{turns} turns (bf16 rounding differs between the two)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "torch": torch.__version__, "shapes": "toy" if args.tiny else
                       "qwen2.5-vl-3b", "turns": turns, "rows": rows, "update_estimate_gb": estimate}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
