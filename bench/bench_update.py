"""Memory and time of one RL update step with Qwen's 151,936-token vocabulary: logits everywhere, or only where a
sampled token is predicted (`logits_to_keep=positions`, what train_rl.py and train_sft.py do).

One text-only trajectory of --length tokens of which --sampled are assistant tokens (a long video dialogue is mostly
frames and template; a 60 s episode of docs/method.md section 3.2 at 1 s a frame is ~14k tokens, ~300 of them
sampled), through the `small` preset with the vocabulary widened to Qwen's: forward, token log-probs at the sampling
temperature, PPO loss, backward. Each variant runs in a fresh process; printed: the peak memory the step adds on top
of the model (CUDA: max_memory_allocated; CPU: growth of the process's peak resident set; both include the
parameters' gradients, the same in both variants) and the faster of 2 steps.

    python -m bench.bench_update [--length 4096] [--sampled 200] [--device cpu]
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from mmduet2 import grpo
from mmduet2.config import preset
from mmduet2.model import MMDuet2
from mmduet2.training import loss_positions

VOCAB = 151_936


def one_variant(length, sampled, device, keep):
    torch.manual_seed(0)
    model = MMDuet2(preset("small", vocab_size=VOCAB)).to(device).train()
    ids = torch.randint(0, 500, (1, length), device=device)  # text only: below the preset's vision token ids
    mask = torch.zeros(1, length, dtype=torch.bool, device=device)
    mask[0, torch.randperm(length - 1, device=device)[:sampled] + 1] = True
    cfg = grpo.GRPOConfig()

    def step():
        pos = loss_positions(mask) if keep else None
        logp = grpo.token_logprobs(model(ids, logits_to_keep=pos), ids, 1.2, pos)  # train_rl's temperature
        loss, _ = grpo.ppo_loss(logp, logp.detach(), torch.ones(1, device=device), mask, cfg)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    return {"extra_peak_gb": peak / 1e9, "step_s": min(times)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=4096, help="tokens in the trajectory")
    p.add_argument("--sampled", type=int, default=200, help="assistant (sampled) tokens among them")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", choices=["all", "kept"], help=argparse.SUPPRESS)  # one run, in a child process
    args = p.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.length, args.sampled, args.device, args.variant == "kept")))
        return
    print(f"one RL update, small preset, vocab {VOCAB}, {args.length} tokens, {args.sampled} sampled, {args.device}")
    out = {}
    for variant in ("all", "kept"):
        run = subprocess.run([sys.executable, "-m", "bench.bench_update", "--length", str(args.length), "--sampled",
                              str(args.sampled), "--device", args.device, "--variant", variant],
                             capture_output=True, text=True, check=True)
        out[variant] = json.loads(run.stdout.strip().splitlines()[-1])
        name = "logits everywhere" if variant == "all" else "logits at sampled positions"
        print(f"  {name:<28} extra peak {out[variant]['extra_peak_gb']:6.2f} GB   step {out[variant]['step_s']:6.2f} s")
    full, kept = out["all"], out["kept"]
    print(f"  ratio (everywhere / kept): memory {full['extra_peak_gb'] / max(kept['extra_peak_gb'], 1e-9):.1f}x, "
          f"time {full['step_s'] / kept['step_s']:.1f}x")


if __name__ == "__main__":
    main()
