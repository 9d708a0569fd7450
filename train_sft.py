"""Supervised fine-tuning on proactive dialogues (docs/method.md section 3.1).

Every assistant turn is trained, `NO REPLY` included; system, user, frame and template tokens never are.
Replies sit at the END of their reply spans in the data (the paper's placement), so the SFT model learns to
speak late; RL is what moves it earlier.

With no arguments this is the first step of the toy experiment: it generates the ShapeWatch data if missing and
fine-tunes the toy's base model (assets/toy_base, which already sees and says what a question asks for, as
Qwen2.5-VL-Instruct does for the paper) for 2,400 steps on CPU (about 16 min), vision tower frozen as in the
paper's recipe, into runs/toy/sft. The paper mixes offline video QA and captions into SFT; the toy mixes in a little
of its caption data (--caption-mix). The base model was made by this program from scratch on captions and presence
dialogues alone (`--init "" --caption-mix 0.5 --dense-mix 0.5`, see the README). With --init DIR it starts from any
hub-layout checkpoint (e.g. Qwen2.5-VL-3B-Instruct with its tokenizer.json); --init "" trains a fresh model of
--preset, with a toy tokenizer learnt from the data.
Data parallel: `torchrun --nproc_per_node N train_sft.py ...` gives each process its own batches of
--batch-size dialogues (N times the data per step); process 0 logs and saves.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmduet2.checkpoint import check_resume, check_token_ids, load_trainer_state, save_checkpoint
from mmduet2.config import preset
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT
from mmduet2.model import MMDuet2
from mmduet2.tokenizer import DEFAULT_SYSTEM_PROMPT, Tokenizer, train_toy_tokenizer
from mmduet2.training import (CAPTION_QUESTION, Split, autocast, caption_text, collate, init_parallel, loss_positions,
                              model_inputs, parse_config, seed_everything)
from shapewatch import ensure_toy_data, presence


@dataclass
class SFTConfig:
    data: str = "data/toy"            # folder with train.jsonl and val.jsonl
    out: str = "runs/toy/sft"         # checkpoint folder (hub layout + tokenizer.json + trainer state)
    init: str = "assets/toy_base"     # hub-layout checkpoint to start from (the toy's base); "" = fresh --preset
    preset: str = "toy"
    steps: int = 2400                 # optimizer steps
    batch_size: int = 8               # dialogues per micro-batch
    grad_accum: int = 1               # micro-batches per optimizer step
    lr: float = 1e-3                  # peak learning rate (the toy; ~1e-5 for a real 3B model)
    weight_decay: float = 0.01
    warmup: int = 30                  # linear warm-up steps
    schedule: str = "cosine"          # constant | cosine
    grad_clip: float = 1.0
    freeze_vision: bool = True        # keep the vision tower fixed (the paper's SFT recipe)
    caption_mix: float = 0.1          # share of each batch that is caption dialogues (records with `objects`)
    dense_mix: float = 0.0            # share that is presence dialogues (the toy base's; shapewatch.presence)
    frames_per_turn: int = 2
    frame_interval: float = 2.0       # seconds per frame in training, as the paper (inference: 1 s)
    max_pixels: int = 128 * 28 * 28
    eval_every: int = 400             # steps between val losses
    save_every: int = 200             # steps between checkpoints
    seed: int = 0
    device: str = "auto"              # cpu, cuda or auto



def sft_loss(logits, batch, positions=None):
    """Next-token cross-entropy on the positions the loss mask marks (assistant replies and their <|im_end|>).
    logits (B, T, V) from a full forward, or (B, P, V) at `positions` (from `loss_positions`)."""
    if positions is None:
        logits, positions = logits[:, :-1], torch.arange(logits.shape[1] - 1)
    positions = positions.to(logits.device)
    target = batch["input_ids"].to(logits.device)[:, positions + 1]
    mask = batch["loss_mask"].to(logits.device)[:, positions + 1]
    loss = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")  # (B, P)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def lr_at(step, base_lr, warmup, total, schedule="constant"):
    """Linear warm-up, then constant or cosine decay to 10 % of the base rate."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    return base_lr


def main():
    # ---- setup ------------------------------------------------------------------------------------------
    cfg, resume = parse_config(SFTConfig, __doc__.splitlines()[0])
    if resume:  # the same data and model as the run being resumed, or its saved state means something else
        check_resume(cfg.out, cfg, ("preset", "data", "init", "frames_per_turn", "frame_interval", "caption_mix",
                                    "dense_mix"))
    if not (0 <= cfg.caption_mix and 0 <= cfg.dense_mix and cfg.caption_mix + cfg.dense_mix <= 1):
        sys.exit(f"--caption-mix {cfg.caption_mix} and --dense-mix {cfg.dense_mix} are shares of each batch: each "
                 "at least 0, together at most 1.")
    par, device = init_parallel(cfg.device)
    log_print = print if par.main else (lambda *a, **k: None)
    log_print(json.dumps(asdict(cfg), indent=2))
    seed_everything(cfg.seed)
    if cfg.data == SFTConfig.data and par.main:
        ensure_toy_data(cfg.data)
    par.barrier()

    # ---- data and tokenizer -----------------------------------------------------------------------------
    train_path, val_path = os.path.join(cfg.data, "train.jsonl"), os.path.join(cfg.data, "val.jsonl")
    train = Split(train_path, cfg.frames_per_turn, cfg.frame_interval, cfg.max_pixels)
    val = Split(val_path, cfg.frames_per_turn, cfg.frame_interval, cfg.max_pixels)
    if resume:
        tok = Tokenizer.from_dir(cfg.out)
    elif cfg.init:
        tok = Tokenizer.from_dir(cfg.init)
    else:
        # The corpus as the model will see it (system prompt once per dialogue, NO REPLY once per silent turn),
        # so BPE spends its merges where the tokens are: shorter sequences, faster training.
        texts = []
        for i, r in enumerate(train.records):
            texts += [SYSTEM_PROMPT] + [s.reply for s in train.turns(i)] + [q["text"] for q in r["questions"]]
            if "objects" in r:
                texts += [DEFAULT_SYSTEM_PROMPT, CAPTION_QUESTION]
                texts += [caption_text(r["objects"], s.time) for s in train.turns(i)]
        # trained by process 0 alone, then sent to the others
        tok = par.from_main(train_toy_tokenizer(texts, vocab_size=512) if par.main else None)

    # ---- model ------------------------------------------------------------------------------------------
    if resume or cfg.init:
        model = MMDuet2.from_pretrained(cfg.out if resume else cfg.init)
    else:
        model = MMDuet2(preset(cfg.preset, vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id,
                               video_token_id=tok.video_pad_id, vision_start_token_id=tok.vision_start_id,
                               vision_end_token_id=tok.vision_end_id))
    check_token_ids(model.config, tok)
    model.to(device).train()
    if cfg.freeze_vision:
        model.visual.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    log_print(f"model: {sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters on {device}"
              + (f", data parallel over {par.world} processes" if par.world > 1 else ""))
    net = par.wrap(model)  # what forward/backward go through (DDP under torchrun)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step = 0
    if resume:
        step, _ = load_trainer_state(cfg.out, optimizer)
        log_print(f"resumed at step {step}")

    can_caption = all("objects" in r for r in train.records)
    if (cfg.caption_mix or cfg.dense_mix) and not can_caption:
        log_print("--caption-mix and --dense-mix ignored: the training records carry no `objects` annotation")

    def presence_reply(record, t):
        return presence(record, t, NO_REPLY)

    if cfg.dense_mix and can_caption:  # every presence reply once now, so bad data fails before training
        try:
            [presence_reply(r, s.time) for i, r in enumerate(train.records) for s in train.turns(i)]
        except ValueError as e:
            sys.exit(str(e))
    val_captions = cfg.caption_mix + cfg.dense_mix >= 1 and all("objects" in r for r in val.records)

    def batch_at(split, k, n):
        # Batch k depends only on (seed, k), so a resumed run sees exactly the same data. Under torchrun,
        # process r of N takes batches k * N + r.
        rng = np.random.default_rng([cfg.seed, k])
        idx = rng.choice(len(split), size=n, replace=len(split) < n)
        u = rng.random(n)  # caption below caption_mix, presence up to caption_mix + dense_mix, else the dialogue
        captions = u < (cfg.caption_mix if can_caption else 0.0)
        dense = (u >= cfg.caption_mix) & (u < cfg.caption_mix + cfg.dense_mix) & can_caption
        return collate([split.sample(int(i), tok, caption=bool(c), replies=presence_reply if d else None)
                        for i, c, d in zip(idx, captions, dense)])

    def batch_loss(module, batch):
        positions = loss_positions(batch["loss_mask"])  # logits only where the loss is taken
        return sft_loss(module(**model_inputs(batch, device, model.dtype), logits_to_keep=positions), batch, positions)

    @torch.no_grad()
    def val_loss():
        model.eval()
        losses = []
        for k in range(0, len(val), cfg.batch_size):
            batch = collate([val.sample(i, tok, caption=val_captions)  # no dialogues trained: the captions
                             for i in range(k, min(k + cfg.batch_size, len(val)))])
            with autocast(device):
                losses.append(batch_loss(model, batch).item())
        model.train()
        return sum(losses) / len(losses)

    # ---- loop -------------------------------------------------------------------------------------------
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    log = open(cfg.out.rstrip("/") + "_log.jsonl", "a") if par.main else None  # runs/toy/sft -> sft_log.jsonl
    t0 = time.time()
    while step < cfg.steps:
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(cfg.grad_accum):
            batch = batch_at(train, (step * cfg.grad_accum + micro) * par.world + par.rank, cfg.batch_size)
            with par.no_sync(net, last=micro == cfg.grad_accum - 1):
                with autocast(device):
                    loss = batch_loss(net, batch) / cfg.grad_accum
                loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        entry = {"step": step, "loss": total, "lr": lr, "grad_norm": grad_norm, "time": time.time() - t0}
        if not par.main:
            continue
        if step % cfg.eval_every == 0 or step == cfg.steps:
            entry["val_loss"] = val_loss()
        if step % 10 == 0 or "val_loss" in entry:
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()),
                  flush=True)
        log.write(json.dumps(entry) + "\n")
        log.flush()
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(cfg.out, model, tok, optimizer, step, asdict(cfg))
    log_print(f"SFT done in {time.time() - t0:.0f} s; checkpoint in {cfg.out}")
    par.close()


if __name__ == "__main__":
    sys.exit(main())
