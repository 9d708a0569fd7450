"""What train_sft.py and train_rl.py share: loading a split with its frames, batching rendered dialogues, the
command line, the device and data parallelism (checkpoints: checkpoint.py).

Data parallel: under `torchrun --nproc_per_node N` each process takes its own share of every step's data and
torch's DistributedDataParallel averages the gradients; process 0 alone logs, validates and saves.
"""
import argparse
import functools
import inspect
import math
import os
import random
import re
from contextlib import nullcontext
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .data import EPS, build_turns, load_dialogues
from .dialogue import SYSTEM_PROMPT, render_dialogue
from .processor import process_images
from .tokenizer import DEFAULT_SYSTEM_PROMPT
from .video import VideoError, probe_video, read_frames


# ------------------------------------------------------------------------------------------------------- Data

CAPTION_QUESTION = "What shapes are on screen now?"


def caption_text(objects, t):
    """What a frame stamped t shows, from a record's `objects` (colour, shape, start, end; ShapeWatch writes them),
    in the toy's answer vocabulary, colour first: "Red circle and blue square." or "Nothing."."""
    seen = [f"{o['colour']} {o['shape']}" for o in sorted(objects, key=lambda o: o["start"])
            if o["start"] <= t < o["end"]]
    return (" and ".join(seen) + ".").capitalize() if seen else "Nothing."


class Split:
    """Training dialogues of one JSONL file, with every video's frames decoded once and kept in memory.

    Every video is probed at load (it opens, decodes, lasts as long as its record needs), and every problem is
    listed in one error before training starts, rather than the first one crashing a run hours in."""

    def __init__(self, path, frames_per_turn=2, frame_interval=None, max_pixels=128 * 28 * 28):
        if not frames_per_turn >= 1 or frame_interval and not 0 < frame_interval < math.inf:  # None/0: the record's
            raise ValueError(f"--frames-per-turn {frames_per_turn} must be at least 1 and --frame-interval "
                             f"{frame_interval} a positive number of seconds.")
        self.records = load_dialogues(path)
        self.frames_per_turn, self.frame_interval, self.max_pixels = frames_per_turn, frame_interval, max_pixels
        self._frames = {}
        probe, problems = functools.lru_cache(maxsize=None)(probe_video), []  # records may share a video
        for rec in self.records:
            interval = self.interval(rec)
            try:  # long enough for the last frame the record's turns show
                probe(rec["video"], rec.get("fps"), math.floor(rec["duration"] / interval + EPS) * interval)
            except VideoError as e:
                problems.append(f"record {rec['id']}: {e}")
        if problems:
            raise ValueError(f"{path}: {len(problems)} of {len(self.records)} records cannot be trained on; fix or "
                             "remove them:\n  " + "\n  ".join(problems))

    def __len__(self):
        return len(self.records)

    def interval(self, rec):
        return self.frame_interval or rec.get("frame_interval", 1.0)

    def frames(self, i):
        if i not in self._frames:
            rec = self.records[i]
            self._frames[i] = read_frames(rec["video"], self.interval(rec), fps=rec.get("fps"))[0]
        return self._frames[i]

    def turns(self, i):
        rec = self.records[i]
        return build_turns(rec, frames_per_turn=self.frames_per_turn, frame_interval=self.interval(rec))

    def pixels(self, frames):
        return process_images(frames, max_pixels=self.max_pixels)

    def sample(self, i, tok, caption=False, merge_size=2, replies=None):
        """The whole dialogue of record i as one training sample (the SFT view).

        caption=True gives an offline caption dialogue of the same video instead: Qwen's default system prompt,
        and every user turn asks what its last frame shows and gets the answer (needs the record's `objects`
        annotation, which ShapeWatch writes). The question is asked again on every turn, so it is plain
        multi-turn QA and never the streaming layout, where answering every turn would teach repeating oneself.
        The paper mixes such data into SFT; the toy's base model is trained on it (train_sft.py). `replies(record, t)`
        gives every turn another reply in the proactive layout (the toy base's presence dialogues)."""
        frames, turns = self.frames(i), self.turns(i)
        used = [frames[k - 1] for t in turns for k in t.frame_indices]
        pixel_values, grid = self.pixels(used)
        tokens_per_frame = int(grid[0].prod()) // merge_size ** 2
        if caption:
            objects = self.records[i]["objects"]
            turns = [replace(t, user_text=CAPTION_QUESTION, reply=caption_text(objects, t.time)) for t in turns]
        elif replies:
            turns = [replace(t, reply=replies(self.records[i], t.time)) for t in turns]
        ids, mask = render_dialogue(tok, turns, tokens_per_frame,
                                    system_prompt=DEFAULT_SYSTEM_PROMPT if caption else SYSTEM_PROMPT)
        return {"input_ids": ids, "loss_mask": mask, "pixel_values": pixel_values, "image_grid_thw": grid}


def collate(samples, pad_id=0):
    """Right-pad a list of samples into one batch; frames of all samples are concatenated in order."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.bool)
    for b, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[b, :n] = torch.as_tensor(s["input_ids"])
        attn[b, :n] = 1
        mask[b, :n] = torch.as_tensor(s["loss_mask"])
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples])}


def model_inputs(batch, device, dtype):
    return dict(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                pixel_values=batch["pixel_values"].to(device, dtype), image_grid_thw=batch["image_grid_thw"].to(device))


def loss_positions(loss_mask):
    """The positions whose logits predict a token the loss mask (B, T) marks in any row: t - 1 for each such t.
    A 1-D tensor for `model(..., logits_to_keep=...)`, so no logits are computed where no loss is taken."""
    return loss_mask[:, 1:].any(0).nonzero()[:, 0]


# ----------------------------------------------------------------------------------------------- Command line

def parse_config(cls, description, argv=None):
    """argparse over a config dataclass: one --flag per field, its help from the field's trailing comment. A field
    holding a config dataclass (RLConfig.reward, a RewardConfig) gives one flag per field of that class instead
    (--w-rep), so a field added there is a flag at once. Returns (config, resume)."""
    p = argparse.ArgumentParser(description=description)
    nested = _add_flags(p, cls)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint this run last saved")
    args = vars(p.parse_args(argv))
    resume = args.pop("resume")
    for name, sub in nested.items():
        args[name] = sub(**{f.name: args.pop(f.name) for f in fields(sub)})
    return cls(**args), resume


def _add_flags(p, cls):
    """Add a flag per field of `cls` to the parser; returns {field name: class} of the nested config fields."""
    comments = dict(re.findall(r"^\s+(\w+): .*?#\s*(.+)$", inspect.getsource(cls), re.M))
    nested = {}
    for f in fields(cls):
        default = f.default_factory() if f.default is MISSING else f.default
        if is_dataclass(default):
            nested[f.name] = type(default)
            _add_flags(p, type(default))
            continue
        flag = "--" + f.name.replace("_", "-")
        text = f"{comments.get(f.name, f.name.replace('_', ' '))} (default {default!r})"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            p.add_argument(flag, type=type(default), default=default, help=text)
    return nested


# ----------------------------------------------------------------------------------------------- Optimisation

def autocast(device):
    """bf16 autocast on a GPU, plain float32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ----------------------------------------------------------------------------------- Data parallel (torchrun)

@dataclass
class Parallel:
    """Where this process stands among the torchrun processes (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, model):
        """The module to run forward/backward through: DDP (gradients averaged over processes) or the model."""
        if self.world == 1:
            return model
        return DistributedDataParallel(model, device_ids=[model.device] if model.device.type == "cuda" else None)

    def no_sync(self, net, last):
        """Skip the gradient all-reduce on every micro-batch but the last of an optimizer step."""
        return net.no_sync() if self.world > 1 and not last else nullcontext()

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        """Wait for every process, then leave the process group (at the end of a run)."""
        self.barrier()
        if self.world > 1:
            dist.destroy_process_group()

    def from_main(self, obj):
        """Process 0's `obj` on every process (e.g. a freshly trained tokenizer)."""
        box = [obj]
        if self.world > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]


def init_parallel(device_name):
    """(Parallel, device). Under torchrun: one process group (NCCL on GPUs, gloo on CPU), one GPU per process."""
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Parallel(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Parallel(dist.get_rank(), world), device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
