"""Does the reply-or-silence decision read the question? Teacher-forced P(NO REPLY) on ShapeWatch val videos.

A proactive model must speak when something the question asks about appears and stay silent for anything else.
For each of the first --n one-question val videos, the dialogue is replayed with every possible question of the
toy at time 0 ("Tell me every time a red shape appears.", ..., "... a triangle appears.") and every earlier turn
silent; on each turn where an object appears, this takes the model's probability of starting its answer with
`NO REPLY` under the questions that the object matches and under those it does not. A model that reads the
question puts a much lower P(NO REPLY) on the matching ones; equal figures mean it decides from the picture
alone, and RL then has no good reply to reinforce that is not also said about the wrong objects.

    python -m bench.probe_question --checkpoint runs/toy/sft
"""
import statistics

import torch

from bench.probe_vision import load_probe
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT, Turn, render_dialogue
from mmduet2.training import collate, model_inputs
from shapewatch import COLOURS, SHAPES, question_text

TARGETS = list(COLOURS) + SHAPES


@torch.no_grad()
def question_gap(model, tok, split, n=40):
    """{"match": mean P(NO REPLY) under matching questions, "other": under the others, "turns": how many turns}
    over the turns of the first n one-question records where an object appears."""
    silent_id, opener = tok.encode(NO_REPLY)[0], tok.encode("<|im_start|>assistant\n")
    match, other = [], []
    for i in [i for i, r in enumerate(split.records) if len(r["questions"]) == 1][:n]:
        rec, specs = split.records[i], split.turns(i)
        frames = split.frames(i)
        pixel_values, grid = split.pixels([frames[k - 1] for s in specs for k in s.frame_indices])
        per_target = []
        for target in TARGETS:
            turns = [Turn(s.time, s.frame_indices, question_text(target) if k == 0 else None)
                     for k, s in enumerate(specs)]
            ids, mask = render_dialogue(tok, turns, int(grid[0].prod()) // 4, system_prompt=SYSTEM_PROMPT)
            batch = collate([{"input_ids": ids, "loss_mask": mask, "pixel_values": pixel_values,
                              "image_grid_thw": grid}])
            logits = model(**model_inputs(batch, model.device, model.dtype))[0]
            seq, m = batch["input_ids"][0].tolist(), len(opener)
            starts = [j + m - 1 for j in range(len(seq) - m + 1) if seq[j:j + m] == opener]  # predicts the answer
            per_target.append(logits[starts].float().softmax(-1)[:, silent_id].tolist())
        for k, s in enumerate(specs):
            prev = specs[k - 1].time if k else 0.0
            for o in (o for o in rec["objects"] if prev < o["start"] <= s.time):
                for j, target in enumerate(TARGETS):
                    (match if target in (o["colour"], o["shape"]) else other).append(per_target[j][k])
    return {"match": statistics.mean(match) if match else None, "other": statistics.mean(other) if other else None,
            "turns": len(match) // 2}


def main():
    args, model, tok, split = load_probe(__doc__.splitlines()[0], 40)  # --n: one-question val records
    gap = question_gap(model, tok, split, args.n)
    print(f"{args.checkpoint}: P(NO REPLY) where an object appears, over {gap['turns']} appearances: "
          f"{gap['match']:.3f} under questions it matches, {gap['other']:.3f} under the others "
          f"(gap {gap['other'] - gap['match']:+.3f})")


if __name__ == "__main__":
    main()
