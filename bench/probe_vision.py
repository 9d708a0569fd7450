"""Does the vision tower see? Teacher-forced caption accuracy of a checkpoint on ShapeWatch's val videos.

Every turn of a caption dialogue is answered with what its last frame shows ("Red circle and blue square.").
Fed the true dialogue, the model predicts each caption token from the frames and the words before it; this
counts how often its top token is right on the colour words and on the shape words. Chance is about 1/4 for
colours and 1/3 for shapes. If these stay near chance, RL can only learn timing priors, never content.

    python -m bench.probe_vision --checkpoint runs/toy/sft
"""
import argparse
import os

import torch

from mmduet2.checkpoint import load_checkpoint
from mmduet2.training import Split, collate, model_inputs
from shapewatch import COLOURS, SHAPES


@torch.no_grad()
def caption_accuracy(model, tok, split, n=None, batch_size=8):
    """{"colour": accuracy, "shape": accuracy, "n_colour", "n_shape"} over the caption turns of the first n records."""
    words = {w: "colour" for w in COLOURS} | {w: "shape" for w in SHAPES}
    hits, totals = {"colour": 0, "shape": 0}, {"colour": 0, "shape": 0}
    idx = list(range(len(split) if n is None else min(n, len(split))))
    for k in range(0, len(idx), batch_size):
        batch = collate([split.sample(i, tok, caption=True) for i in idx[k:k + batch_size]])
        pred = model(**model_inputs(batch, model.device, model.dtype)).argmax(-1)[:, :-1]  # predicts token t + 1
        target, mask = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:]
        for b, t in mask.nonzero().tolist():
            kind = words.get(tok.decode([int(target[b, t])]).strip().lower())
            if kind:
                totals[kind] += 1
                hits[kind] += int(pred[b, t] == target[b, t])
    return {**{k: hits[k] / max(1, totals[k]) for k in hits}, **{f"n_{k}": totals[k] for k in totals}}


def load_probe(description, n):
    """The command line both probes share: (args, model, tokenizer, the ShapeWatch val split)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--checkpoint", default="runs/toy/sft")
    p.add_argument("--data", default="data/toy", help="a ShapeWatch folder (its val.jsonl carries `objects`)")
    p.add_argument("--n", type=int, default=n, help="val records to probe")
    p.add_argument("--frame-interval", type=float, default=2.0)
    args = p.parse_args()
    model, tok = load_checkpoint(args.checkpoint)
    split = Split(os.path.join(args.data, "val.jsonl"), frame_interval=args.frame_interval)
    if not all("objects" in r for r in split.records):
        raise SystemExit(f"{args.data}/val.jsonl has no `objects` annotations: this probe needs ShapeWatch data.")
    return args, model, tok, split


def main():
    args, model, tok, split = load_probe(__doc__.splitlines()[0], 60)
    acc = caption_accuracy(model, tok, split, args.n)
    print(f"{args.checkpoint}: colour {acc['colour']:.1%} of {acc['n_colour']} words, "
          f"shape {acc['shape']:.1%} of {acc['n_shape']} words (chance about 25 % and 33 %)")


if __name__ == "__main__":
    main()
