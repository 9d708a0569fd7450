"""Where does the RL update's credit land, turn by turn? The rollouts of train_rl.py's first steps, without an update.

Plays the rollouts of `--steps` RL steps from a checkpoint (the same prompts, episode windows and sampling as
train_rl.py with its default settings and the same seed), computes the paper's group advantages, gives every
played turn its trajectory's advantage A and classes the turn against the window's gold spans:

    reply, first in span, right   the first reply inside a gold span, naming its gold object (the reward's judge;
                                  where spans overlap, the gold object of any span it is the first reply in)
    reply, first in span, wrong   the same, naming another object
    reply again in span           a reply inside spans that this trajectory has all replied in already (rightly
                                  or not: a span counts as answered from its first reply on)
    reply outside every span
    silent, span due              NO REPLY while a span is open and not yet answered
    silent elsewhere

The policy gradient moves each class's decision by the sum of A over its turns (A * grad log p). Every rollout of
a group plays the same turns and a group's advantages sum to zero, so the reply classes' sums and the silent
classes' sums cancel: a negative total on the reply side is the update pushing every decision towards NO REPLY,
on top of what it teaches about which turns should speak (docs/experiments.md has the tables for the toy).

    python -m bench.credit --sft runs/toy/sft [--steps 5] [--temperature 1.2] [--data data/toy]
"""
import argparse
import collections
import os

import numpy as np
import torch

import train_rl
from mmduet2 import grpo
from mmduet2.checkpoint import load_checkpoint
from mmduet2.dialogue import silent
from mmduet2.training import Split, autocast, pick_device

CLASSES = ("reply, first in span, right", "reply, first in span, wrong", "reply again in span",
           "reply outside every span", "silent, span due", "silent elsewhere")


def turn_classes(turns, answers, judge, max_score):
    """One of CLASSES per played turn (time, text), against the gold answers of the window."""
    spans, answered, out = [a["reply_timespan"] for a in answers], set(), []
    for t, text in turns:
        inside = [j for j, (a, b) in enumerate(spans) if a <= t <= b]
        due = [j for j in inside if j not in answered]
        if silent(text):
            out.append("silent, span due" if due else "silent elsewhere")
        elif not inside:
            out.append("reply outside every span")
        elif not due:
            out.append("reply again in span")
        else:  # right if it names the gold object of any span it is the first reply in (spans may overlap)
            right = any(judge(answers[j]["question"], answers[j]["content"], text) >= max_score for j in due)
            out.append("reply, first in span, " + ("right" if right else "wrong"))
            answered.update(due)
    return out


def credit(model, tok, split, cfg, judges, steps):
    """{class: (turns, sum of A)} and {replies in a rollout: [A, ...]} over the rollouts of `steps` RL steps."""
    table, by_replies = {k: [0, 0.0] for k in CLASSES}, collections.defaultdict(list)
    model.eval()
    for step in range(steps):
        rng = np.random.default_rng([cfg.seed, step])  # as train_rl.py draws a step's prompts and samples
        prompts = rng.choice(len(split), size=cfg.prompts_per_step, replace=len(split) < cfg.prompts_per_step)
        with torch.no_grad(), autocast(model.device):  # as train_rl.py rolls out (bf16 on a GPU)
            episodes = train_rl.rollout(model, tok, split, [int(i) for i in prompts], rng, cfg, judges)
        adv = grpo.group_advantages(torch.tensor([ep.reward for ep in episodes]), cfg.group_size,
                                    normalize_std=cfg.normalize_std)
        for ep, a in zip(episodes, adv.tolist()):
            kinds = turn_classes(ep.turns, ep.answers, judges.sim, cfg.reward.max_score)
            by_replies[sum(k.startswith("reply") for k in kinds)].append(a)
            for k in kinds:
                table[k][0] += 1
                table[k][1] += a
    return table, dict(by_replies)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=True, help="checkpoint to roll out (an SFT model, or any RL step)")
    p.add_argument("--data", default="data/toy", help="folder with train.jsonl, as train_rl.py's --data")
    p.add_argument("--steps", type=int, default=5, help="RL steps whose rollouts are played")
    p.add_argument("--temperature", type=float, default=train_rl.RLConfig.temperature)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    args = p.parse_args()
    cfg = train_rl.RLConfig(sft=args.sft, data=args.data, temperature=args.temperature, seed=args.seed)
    torch.manual_seed(args.seed)
    split = Split(os.path.join(cfg.data, "train.jsonl"), cfg.frames_per_turn, cfg.frame_interval)
    model, tok = load_checkpoint(cfg.sft, device=pick_device(args.device))
    table, by_replies = credit(model, tok, split, cfg, train_rl.make_judges(cfg), args.steps)
    print(f"{args.sft}, temperature {args.temperature}: {sum(map(len, by_replies.values()))} rollouts of "
          f"{args.steps} steps")
    print(f"{'turn':30s} {'turns':>6s} {'sum A':>8s} {'mean A':>8s}")
    for k, (n, s) in table.items():
        print(f"{k:30s} {n:6d} {s:8.2f} {s / max(n, 1):8.3f}")
    reply = sum(s for k, (n, s) in table.items() if k.startswith("reply"))
    quiet = sum(s for k, (n, s) in table.items() if k.startswith("silent"))
    print(f"all reply turns: sum A {reply:+.2f}; all silent turns: {quiet:+.2f}")
    print("replies in a rollout: rollouts, mean A")
    for r in sorted(by_replies):
        print(f"  {r}: {len(by_replies[r])}, {np.mean(by_replies[r]):+.3f}")


if __name__ == "__main__":
    main()
