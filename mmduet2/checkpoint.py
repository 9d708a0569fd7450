"""Checkpoints: atomic writes, loading a model with its tokenizer, and the trainer state that makes resume exact.

A checkpoint directory is the hub layout (config.json + model.safetensors) plus tokenizer.json, so eval.py, the
demo and the reference implementation read it as it is; `trainer_state.pt` (optimizer, step, RNG states, the
script's extra state) and `train_config.json` sit beside it for `--resume`.

`atomic_path` writes a file or a folder whole under a temporary name and renames it into place, so a crash mid-save
never leaves half of one, nor destroys the previous version. Checkpoints, the toy data set, videos, plots, metrics
and provenance files are written through it; logs, predictions and the judge cache are appended line by line.
"""
import json
import os
import random
import shutil
import sys
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch

from .model import MMDuet2
from .tokenizer import Tokenizer


@contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path` to write a file or a whole folder into; when the body succeeds it
    replaces `path` (a folder already there is moved aside, then deleted), when it fails it is deleted and `path`
    stays as it was. The process id in the names keeps two processes writing the same path apart."""
    tmp, old = f"{path}.tmp{os.getpid()}", f"{path}.old{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        yield tmp
        if os.path.isdir(path):
            os.replace(path, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, path)
    finally:
        for p in (tmp, old):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)


def write_json(path, obj, indent=2):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)


# ---------------------------------------------------------------------------------------------------- Loading

def load_checkpoint(path, dtype=None, device="cpu"):
    """(model in eval mode, tokenizer) from a checkpoint directory: the hub layout plus tokenizer.json. The weights
    are float32 on the CPU and, unless `dtype` says otherwise, bf16 on a GPU (as released checkpoints are stored)."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = MMDuet2.from_pretrained(path, dtype=dtype).to(device).eval()
    tok = Tokenizer.from_dir(path)
    check_token_ids(model.config, tok)
    return model, tok


def check_token_ids(config, tok):
    """Special-token ids live in both config.json and tokenizer.json; a drift silently ruins everything."""
    pairs = {"image_token_id": tok.image_pad_id, "video_token_id": tok.video_pad_id,
             "vision_start_token_id": tok.vision_start_id}
    bad = [f"{k}={getattr(config, k)} but the tokenizer says {v}" for k, v in pairs.items() if getattr(config, k) != v]
    if bad:
        raise ValueError("config.json and tokenizer.json disagree on special tokens (" + "; ".join(bad)
                         + "): use the tokenizer.json saved with this checkpoint.")


# ---------------------------------------------------------------------------------------- Saving and resuming

def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # this process's GPU only: a resume may see a different number of GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(out_dir, model, tok, optimizer, step, config, extra=None):
    """Write model (hub layout), tokenizer, optimizer, step, RNG state and the run's config to out_dir, atomically."""
    with atomic_path(os.path.abspath(out_dir)) as tmp:
        model.save_pretrained(tmp)
        tok.save(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "rng": rng_state(), "extra": extra or {}},
                   os.path.join(tmp, "trainer_state.pt"))
        write_json(os.path.join(tmp, "train_config.json"), config if isinstance(config, dict) else asdict(config))


def check_resume(ckpt_dir, cfg, fields):
    """Exit with one sentence if the train_config.json in ckpt_dir differs from `cfg` (a config dataclass) in any
    of `fields`: a resumed run must go on with the data and model it started with."""
    path = os.path.join(ckpt_dir, "train_config.json")
    if not os.path.isfile(path):
        sys.exit(f"{path} not found: --resume needs a checkpoint written by this script.")
    with open(path) as f:
        saved = json.load(f)

    def norm(v):  # "data/toy/" is "data/toy"; a tuple is the list JSON made of it
        return os.path.normpath(v) if isinstance(v, str) and v else json.loads(json.dumps(v))
    def was(k):  # a field newer than the checkpoint had its default then
        return saved[k] if k in saved else getattr(type(cfg)(), k)
    now = asdict(cfg)
    diff = [f"--{k.replace('_', '-')} {was(k)!r} (now {now[k]!r})" for k in fields if norm(was(k)) != norm(now[k])]
    if diff:
        sys.exit(f"{ckpt_dir} was trained with {', '.join(diff)}: resume with the same flags, or start a new --out.")


def load_trainer_state(ckpt_dir, optimizer):
    """Restore optimizer and RNG state; returns (step, extra)."""
    path = os.path.join(ckpt_dir, "trainer_state.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --resume needs a checkpoint written by this script.")
    # On the CPU first: a GPU-saved state would otherwise land on the GPU it was saved from (cuda:0 for every
    # torchrun process); load_state_dict moves the optimizer's state to its parameters' device.
    state = torch.load(path, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]
