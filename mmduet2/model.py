"""Qwen2.5-VL as MMDuet2 uses it: the Qwen2 decoder with M-RoPE, the vision tower, and a KV cache for streaming.

MMDuet2 changes nothing in Qwen2.5-VL-3B (docs/method.md sections 1-2): a streaming video is a multi-turn chat whose
user turns carry frames. What this file adds is the cache discipline streaming needs: one pre-allocated
KV cache per dialogue, written by index, that every turn appends to (frames, text, then one token per decoded
step), with per-row slot validity (padding, rows that finished decoding) and per-row M-RoPE positions, so that
feeding a dialogue chunk by chunk gives the logits of one forward over the whole of it.

Parameter names equal the checkpoint keys, so loading is a prefix map plus a strict check.

Departure: after a vision block the next text position is one past the largest id the block used, as in
the original Qwen2.5-VL code the released checkpoints were trained with. transformers 5.x instead advances by
max(h, w) / merge, which differs for videos whose temporal ids outgrow the frame's height and width.
"""
import bisect
import json
import os
import re
from pathlib import Path

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, load_config
from .vision import MLP, RMSNorm, VisionTransformer, apply_rotary


def mrope_cos_sin(pos, cfg, dtype):
    """M-RoPE: the head's rotary pairs are split in three sections fed by the temporal, height and width ids.
    pos (3, B, T) long -> cos, sin (B, 1, T, head_dim)."""
    d = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float, device=pos.device) / d)
    axis = torch.repeat_interleave(torch.arange(3, device=pos.device),
                                   torch.tensor(cfg.mrope_section, device=pos.device))  # (d/2,) which id feeds a pair
    angles = pos.permute(1, 2, 0)[..., axis].float() * inv_freq  # (B, T, d/2)
    angles = torch.cat([angles, angles], -1)[:, None]              # (B, 1, T, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def causal_mask(valid, start, t):
    """Bool mask (B, 1, t, S) for t queries at slots start..start+t-1 over S = valid.shape[1] key slots:
    bottom-right aligned causal (a query sees every slot up to its own) and blind to invalid slots. A padded
    query still sees itself, so its (never used) output stays finite instead of NaN."""
    q = torch.arange(start, start + t, device=valid.device)[:, None]
    k = torch.arange(valid.shape[1], device=valid.device)[None, :]
    return (((k <= q) & valid[:, None, :]) | (k == q))[:, None]


# ------------------------------------------------------------------------------------------------------ decoder
class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, layer=0, start=0):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)     # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # (B, Hkv, S, D): everything cached so far, this chunk included
        causal = mask is None and cache is None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=False)

    def forward(self, x, cos, sin, mask, cache, layer, start):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The Qwen2 language model: checkpoint keys `model.embed_tokens`, `model.layers.N.*`, `model.norm`."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gradient_checkpointing = False  # set by the training scripts (--grad-checkpointing)

    def forward(self, x, pos, mask, cache=None, start=0):
        cos, sin = mrope_cos_sin(pos, self.cfg, x.dtype)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                # Recompute each layer's activations in the backward pass: memory for compute, same numbers.
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, None, i, start, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i, start)
        return self.norm(x)


# ------------------------------------------------------------------------------------------------------ M-RoPE ids
def get_rope_index(config, input_ids, image_grid_thw=None, video_grid_thw=None, second_per_grid_ts=None,
                   attention_mask=None, start=None):
    """Qwen2.5-VL's 3D position ids (temporal, height, width) for a batch of token rows.

    Text advances all three ids together. A run of image / video pad tokens takes the next grid (t, h, w) of
    its kind, in row-major order over the batch, and gets t = p + t_index * second_per_grid_t *
    tokens_per_second (videos; 0 for images), h = p + row, w = p + col (merged tokens); the next text position
    is one past the largest id used (module docstring). Padded slots (attention_mask 0) advance nothing.
    `start` (B,) continues each row from a cache's `next_pos`. Returns (position_ids (3, B, T) long,
    next_pos (B,) long)."""
    b, t = input_ids.shape
    dev = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    start = torch.zeros(b, dtype=torch.long, device=dev) if start is None else start.to(dev)
    img, vid = config.image_token_id, config.video_token_id
    merge, tps = config.vision.spatial_merge_size, config.vision.tokens_per_second
    grids = {img: [] if image_grid_thw is None else image_grid_thw.tolist(),
             vid: [] if video_grid_thw is None else video_grid_thw.tolist()}
    # A pad count that does not match the grids would shift every later position silently: refuse it up front.
    for tok, name in ((img, "image"), (vid, "video")):
        have = int(((input_ids == tok) & valid).sum())
        need = sum(gt * gh * gw for gt, gh, gw in grids[tok]) // merge ** 2
        if have != need:
            raise ValueError(f"input_ids hold {have} <|{name}_pad|> tokens but {name}_grid_thw {grids[tok]} needs "
                             f"{need} (t*h*w/{merge ** 2} per {name}); build the prompt from the same grid.")
    if not any(grids.values()):  # text only: a running count per row (the decode path, so kept vectorised)
        pos = start[:, None] + valid.long().cumsum(1) - 1
        return pos.expand(3, b, t).clone(), start + valid.sum(1)
    secs = [1.0] * len(grids[vid]) if second_per_grid_ts is None else torch.as_tensor(second_per_grid_ts).tolist()
    if len(secs) != len(grids[vid]):
        raise ValueError(f"second_per_grid_ts has {len(secs)} entries for {len(grids[vid])} videos; give one per video.")
    used = {img: 0, vid: 0}  # grids are taken in order across rows, as the processor lists a batch's pictures
    pos = torch.zeros(3, b, t, dtype=torch.long)
    next_pos = []
    for row in range(b):
        # Ids are counted over the row's real tokens only, so a padded row gets the ids it would get alone.
        cols = valid[row].nonzero()[:, 0].cpu()
        ids = input_ids[row, cols].tolist()
        vis_at = [i for i, x in enumerate(ids) if x in (img, vid)]
        out, cur, i = [], int(start[row]), 0
        while i < len(ids):
            if ids[i] not in (img, vid):  # text up to the next vision token
                j = vis_at[bisect.bisect_left(vis_at, i)] if vis_at and vis_at[-1] >= i else len(ids)
                out.append(torch.arange(cur, cur + j - i).expand(3, -1))
                cur, i = cur + j - i, j
                continue
            tok = ids[i]
            gt, gh, gw = grids[tok][used[tok]]
            gh, gw = gh // merge, gw // merge
            n = gt * gh * gw
            if ids[i:i + n] != [tok] * n:
                raise ValueError(f"a run of pad tokens at position {int(cols[i])} of row {row} is not the "
                                 f"{n} tokens its grid {grids[tok][used[tok]]} needs; each image or video needs "
                                 f"exactly t*h*w/{merge ** 2} consecutive pad tokens.")
            if tok == vid:  # float32 like the original: (t_index * seconds) * tokens_per_second, then floor
                tt = (torch.arange(gt).float() * torch.tensor(secs[used[tok]], dtype=torch.float32) * tps).long()
            else:
                tt = torch.zeros(gt, dtype=torch.long)
            # (3, n): the (time, row, column) of every merged token in (t, h, w) order, all from the block's start
            block = torch.stack([tt.repeat_interleave(gh * gw), torch.arange(gh).repeat_interleave(gw).repeat(gt),
                                 torch.arange(gw).repeat(gt * gh)]) + cur
            out.append(block)
            cur, i, used[tok] = int(block.max()) + 1, i + n, used[tok] + 1  # text goes on past the largest id
        if out:
            pos[:, row, cols] = torch.cat(out, 1)
        next_pos.append(cur)
    return pos.to(dev), torch.tensor(next_pos, device=dev)


# ------------------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Per-layer keys and values (B, Hkv, capacity, D), pre-allocated and written by index.

    `length` slots are in use, shared by all rows. Per row and slot it keeps whether the slot is real (a padded
    slot, or the pad a finished row feeds while others decode, is invisible to every later query), and per row
    the next M-RoPE id `next_pos` (B,), which rows that watch different videos or sat turns out advance apart.
    Capacity doubles when full (amortised O(1) per token); a decode step builds an O(length) mask and copies
    nothing else. `evict` drops slots in place for a bounded cache (the Streamer's `window`, off by default); `tag`
    (B, capacity) is an integer per slot that the caller writes (what the slot holds) and that moves with it."""

    def __init__(self, n_layers, batch_size, n_kv_heads, head_dim, capacity=256, dtype=torch.float32, device="cpu"):
        shape = (batch_size, n_kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's next M-RoPE id
        self.tag = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)
        self.length = 0

    @property
    def batch_size(self):
        return self.valid.shape[0]

    @property
    def capacity(self):
        return self.valid.shape[1]

    def _grow(self, need):
        cap = self.capacity
        while cap < need:
            cap *= 2
        if cap == self.capacity:
            return
        extra = cap - self.capacity
        self.k = [F.pad(x, (0, 0, 0, extra)) for x in self.k]
        self.v = [F.pad(x, (0, 0, 0, extra)) for x in self.v]
        self.valid = F.pad(self.valid, (0, extra), value=False)
        self.tag = F.pad(self.tag, (0, extra))

    def append(self, valid, pos):
        """Claim slots for a chunk: valid (B, T) bool, pos (3, B, T). Returns (start slot, attention mask)."""
        b, t = valid.shape
        if b != self.batch_size:
            raise ValueError(f"a batch of {b} rows was fed to a cache of {self.batch_size} rows; use "
                             "new_cache(batch_size) or cache.expand(n).")
        start = self.length
        self._grow(start + t)
        top = pos.amax(0).masked_fill(~valid, -1)  # (B, T): each slot's largest M-RoPE id, -1 on pads
        self.valid[:, start:start + t] = valid
        self.next_pos = torch.maximum(self.next_pos, top.amax(1) + 1)
        self.length = start + t
        seen = self.valid[:, :self.length]
        if t == 1:  # decode: the new token sees every valid slot (and itself)
            return start, None if bool(seen.all()) else (seen | (torch.arange(self.length, device=seen.device)
                                                               == start))[:, None, None, :]
        return start, causal_mask(seen, start, t)

    def update(self, layer, start, k, v):
        t = k.shape[2]
        self.k[layer][:, :, start:start + t] = k
        self.v[layer][:, :, start:start + t] = v
        return self.k[layer][:, :, :self.length], self.v[layer][:, :, :self.length]

    def evict(self, keep):
        """Drop every slot outside `keep` (B, length) bool, in place: each row's kept slots move, in order, to the
        front of the same buffers, and `length` becomes the largest row's count (a row that keeps fewer gets invalid
        slots at the end). The kept keys stay rotated by the M-RoPE ids they were written with and `next_pos` does
        not move, so the cache equals one that was fed only the kept tokens at their original ids (docs/scaling.md,
        "A bounded cache", says why the ids are not re-anchored)."""
        keep = keep & self.valid[:, :self.length]
        if bool((keep == self.valid[:, :self.length]).all()):
            return
        n = int(keep.sum(1).max())
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :n]  # (B, n): kept slots first, in order
        for x in self.k + self.v:  # (B, Hkv, capacity, D)
            x[:, :, :n] = x.gather(2, order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))
        self.valid[:, :n], self.tag[:, :n] = keep.gather(1, order), self.tag.gather(1, order)
        self.valid[:, n:] = False
        self.length = n

    @classmethod
    def concat(cls, caches):
        """Stack caches row-wise (several RL groups into one batch). Each row keeps its slots and positions; a
        cache shorter than the longest is padded with invalid slots, so all rows go on from one shared length."""
        cap = max(c.capacity for c in caches)
        slots = lambda x: F.pad(x, (0, 0, 0, cap - x.shape[2]))                    # (B, H, S, D) keys / values
        flags = lambda x: F.pad(x, (0, cap - x.shape[1]), value=False)          # (B, S) validity
        out = cls.__new__(cls)
        out.k = [torch.cat([slots(c.k[i]) for c in caches]) for i in range(len(caches[0].k))]
        out.v = [torch.cat([slots(c.v[i]) for c in caches]) for i in range(len(caches[0].v))]
        out.valid = torch.cat([flags(c.valid) for c in caches])
        out.tag = torch.cat([F.pad(c.tag, (0, cap - c.tag.shape[1])) for c in caches])
        out.next_pos = torch.cat([c.next_pos for c in caches])
        out.length = max(c.length for c in caches)
        return out

    def expand(self, n):
        """Each row becomes n identical rows (rows r*n .. r*n+n-1 copy row r): one RL group from a shared prefix."""
        rep = lambda x: x.repeat_interleave(n, dim=0)
        self.k, self.v = [rep(x) for x in self.k], [rep(x) for x in self.v]
        self.valid, self.next_pos, self.tag = rep(self.valid), rep(self.next_pos), rep(self.tag)


# ----------------------------------------------------------------------------------------------------------- model
def init_weights(model, std=0.02):
    """The one place weights are initialised (as Qwen's initializer_range): normal(0, std), zero biases, unit norms."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)


class MMDuet2(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.model = Decoder(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        init_weights(self)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def random(cls, config, dtype=torch.float32, device="cpu"):
        """Random weights made directly in `dtype` on `device`: the model is built on the meta device (no memory,
        no init), given empty storage, then initialised once by init_weights, so a 3B model in bf16 never exists
        in float32 nor pays nn.Linear's own init first (benchmarks, tests at real widths)."""
        with torch.device("meta"):
            model = cls(config).to(dtype)
        model.to_empty(device=device)
        init_weights(model)
        if config.tie_word_embeddings:  # to_empty gives the tied pair two storages
            model.lm_head.weight = model.model.embed_tokens.weight
        return model

    @property
    def dtype(self):
        return self.lm_head.weight.dtype

    @property
    def device(self):
        return self.lm_head.weight.device

    def new_cache(self, batch_size, max_len=None):
        """An empty KVCache; `max_len` is the initial capacity (it doubles when exceeded)."""
        t = self.config.text
        return KVCache(t.num_hidden_layers, batch_size, t.num_key_value_heads, t.head_dim, capacity=max_len or 256,
                       dtype=self.dtype, device=self.device)

    def forward(self, input_ids, *, attention_mask=None, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None, cache=None,
                logits_to_keep=None):
        """input_ids (B, T) -> logits (B, T, V) float32; only the last `logits_to_keep` positions if it is an int,
        only the positions it lists if it is a 1-D tensor (training needs logits where a loss is taken only: with
        Qwen's 151,936-token vocabulary, logits everywhere are the largest tensor of a long video dialogue).
        attention_mask (B, T): 1 real token, 0 padding anywhere. With `cache`, the chunk is appended to it and
        attends to everything cached; its M-RoPE ids continue from `cache.next_pos`."""
        b, t = input_ids.shape
        valid = None if attention_mask is None else attention_mask.to(input_ids.device).bool()
        pos, _ = get_rope_index(self.config, input_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, valid,
                                None if cache is None else cache.next_pos)
        x = self.model.embed_tokens(input_ids)
        x = self._insert_vision(x, input_ids, valid, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        if cache is None:
            start, mask = 0, None if valid is None or bool(valid.all()) else causal_mask(valid, 0, t)
        else:
            start, mask = cache.append(torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid, pos)
        h = self.model(x, pos, mask, cache, start)
        if isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep.to(h.device)]
        elif logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h).float()

    def _insert_vision(self, x, input_ids, valid, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw):
        """Run the vision tower once over all images and videos and write its features over their pad tokens."""
        pixels, grids, toks = [], [], []
        for pv, grid, tok, name in ((pixel_values, image_grid_thw, self.config.image_token_id, "image"),
                                    (pixel_values_videos, video_grid_thw, self.config.video_token_id, "video")):
            if (pv is None) != (grid is None):
                raise ValueError(f"pass {name} pixels and {name}_grid_thw together (got only one of them).")
            if pv is not None:
                pixels.append(pv)
                grids.append(grid)
                toks.append(tok)
        if not pixels:
            return x
        feats = self.visual(torch.cat(pixels).to(x.device), torch.cat(grids)).to(x.dtype)
        merge = self.config.vision.spatial_merge_size ** 2
        sizes = [int(g.prod(-1).sum()) // merge for g in grids]
        for f, tok in zip(feats.split(sizes), toks):
            where = input_ids == tok if valid is None else (input_ids == tok) & valid
            x = x.masked_scatter(where[..., None], f)  # row-major: the order get_rope_index gives the grids
        return x

    # ------------------------------------------------------------------------------------------- hub checkpoints
    def _hub_state(self):
        sd = self.state_dict()
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight")  # tied: the hub checkpoint has only model.embed_tokens.weight
        return sd

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32):
        """Load a hub-layout checkpoint directory (config.json + model.safetensors or index + shards)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        config = load_config(path)
        single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(single):
            files = [single]
        elif os.path.isfile(index):
            with open(index) as f:
                files = [os.path.join(path, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
        else:
            raise FileNotFoundError(f"{path} has neither model.safetensors nor model.safetensors.index.json; "
                                    "point at a directory written by save_pretrained or downloaded from the hub.")
        state = {}
        for file in files:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file}, listed in {index}, is missing; download every shard.")
            try:
                tensors = load_file(file)
            except SafetensorError as e:  # a download or save cut short leaves a header that promises more bytes
                raise ValueError(f"{file} is not a complete safetensors file ({e}): download it again, or re-save the "
                                 "checkpoint with save_pretrained.") from None
            for k, v in tensors.items():
                # Newer writers nest the decoder and the tower under model.language_model. / model.visual.
                if k.startswith("model.language_model."):
                    k = "model." + k[len("model.language_model."):]
                elif k.startswith("model.visual."):
                    k = k[len("model."):]
                state[k] = v
        with torch.device("meta"):
            model = cls(config)
        expected = {k: v.shape for k, v in model._hub_state().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # some writers store the tied copy too; it is the embedding
        problems = [f"missing {k}" for k in expected if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in expected]
        problems += [f"{k} has shape {tuple(state[k].shape)}, the config needs {tuple(s)}"
                     for k, s in expected.items() if k in state and state[k].shape != s]
        if problems:
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise ValueError(f"Checkpoint {path} does not match its config.json: " + "; ".join(problems[:20]) + more
                             + ". Use the config.json saved with these weights.")
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model

    def save_pretrained(self, path, max_shard_size=None):
        """Write config.json and the weights in the hub layout: model.safetensors, or with `max_shard_size` (bytes)
        shards model-0000k-of-0000n.safetensors of at most that size each (a larger tensor gets a shard of its own)
        and the hub's model.safetensors.index.json. Each file appears whole or not at all; weight files of an
        earlier save into `path` that this one does not rewrite are removed."""
        from safetensors.torch import save_file

        from .checkpoint import atomic_path  # imported here: checkpoint.py imports this module
        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self._hub_state().items()}
        nbytes = {k: v.numel() * v.element_size() for k, v in state.items()}
        shards, size = [[]], 0
        for k in state:  # greedily, in state-dict order (as transformers shards)
            if max_shard_size and shards[-1] and size + nbytes[k] > max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(k)
            size += nbytes[k]
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
        files = {name: lambda f, keys=keys: save_file({k: state[k] for k in keys}, f, metadata={"format": "pt"})
                 for name, keys in zip(names, shards)}
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(nbytes.values())},
                     "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            files["model.safetensors.index.json"] = lambda f: Path(f).write_text(text)
        config = json.dumps(self.config.to_hf(str(self.dtype).removeprefix("torch.")), indent=2) + "\n"
        files["config.json"] = lambda f: Path(f).write_text(config)
        for name, write in files.items():
            with atomic_path(os.path.join(path, name)) as tmp:
                write(tmp)
        for name in os.listdir(path):  # an earlier save's weights would otherwise be loaded (or hashed) with these
            stale = name in ("model.safetensors", "model.safetensors.index.json") or re.fullmatch(
                r"model-\d{5}-of-\d{5}\.safetensors", name)
            if stale and name not in files:
                os.remove(os.path.join(path, name))

