"""The Qwen2.5-VL vision tower and merger (docs/method.md section 2), plus the norm / MLP pieces the decoder shares.

Pixels arrive as Qwen's processor writes them: one row per 14x14 patch over 2 frames (3*2*14*14 values), the
patches of each frame ordered by 2x2 merge group, and `grid_thw` (t, h, w) in patches per image or video.
The tower embeds patches, runs ViT blocks with a 2D rotary embedding on each patch's (row, col), and attends
inside windows of window_size px (8x8 patches) except in `fullatt_block_indexes`, where each frame attends
over itself. Patches are reordered window by window before the blocks and restored after the merger, which
turns each 2x2 group into one decoder token. Module names equal the checkpoint keys under `visual.`.

Departures from the reference code: the Conv3d patch embedding (kernel = stride = patch) is
computed as the linear map it is, and the per-window / per-frame attention runs as one padded batch of
segments (memory linear in the number of patches) instead of a Python loop or a dense block-diagonal mask;
both change only float rounding (parity with transformers is tested to 1e-4).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in float32, as Qwen does, then scale in the input dtype.
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); with biases in the vision tower, without in the decoder."""

    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)  # rotate_half: (x1, x2) -> (-x2, x1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ------------------------------------------------------------------------------------------------ index helpers
def patch_positions(grid_thw, merge):
    """(row, col) of every patch in the processor's order: frames, then 2x2 merge groups, then inside them."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # (h/m, m, w/m, m) -> (h/m, w/m, m, m): group patches by merge block
        rc = torch.stack([rows.transpose(1, 2).flatten(), cols.transpose(1, 2).flatten()], -1)
        out.append(rc.repeat(t, 1))
    return torch.cat(out)  # (N, 2)


def window_order(grid_thw, merge, window):
    """Merged-token order that puts each window's tokens together, and the window lengths in patches.
    `window` is the window side in merged tokens; windows at the right / bottom edge may be partial."""
    order, lengths, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        h, w = h // merge, w // merge
        idx = torch.arange(t * h * w).view(t, h, w) + offset
        for f in range(t):
            for r in range(0, h, window):
                for c in range(0, w, window):
                    win = idx[f, r:r + window, c:c + window].flatten()
                    order.append(win)
                    lengths.append(len(win) * merge * merge)
        offset += t * h * w
    return torch.cat(order), lengths


def segment_batch(lengths, device):
    """Gather indices (S, L) that lay consecutive segments out as a padded batch, and their validity (S, L)."""
    lengths = torch.tensor(lengths, device=device)
    starts = torch.cumsum(lengths, 0) - lengths
    col = torch.arange(int(lengths.max()), device=device)
    valid = col[None, :] < lengths[:, None]
    return torch.where(valid, starts[:, None] + col[None, :], 0), valid


# ------------------------------------------------------------------------------------------------------ modules
class PatchEmbed(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=k, stride=k, bias=False)

    def forward(self, x):
        # A Conv3d whose kernel equals its stride on one patch is a linear map of the flattened (C, T, P, P) patch.
        return F.linear(x.to(self.proj.weight.dtype), self.proj.weight.flatten(1))  # (N, D)


class VisionAttention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x, cos, sin, seg_idx, seg_valid):
        n, d = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.n_heads, d // self.n_heads).unbind(1)  # each (N, H, Dh)
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)
        # Lay the segments (windows or frames) out as a padded batch: (S, H, L, Dh), keys masked past each end.
        q, k, v = (t[seg_idx].transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=seg_valid[:, None, None, :])
        # Segments are consecutive, so the valid rows of the batch are the patches in their original order.
        return self.proj(o.transpose(1, 2)[seg_valid].reshape(n, d))


class VisionBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.hidden_size)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=True)

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, *segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """RMSNorm, then an MLP over each 2x2 group of patches (4 * D values) into the decoder width."""

    def __init__(self, cfg):
        super().__init__()
        self.group = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(cfg.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(self.group, self.group), nn.GELU(), nn.Linear(self.group, cfg.out_hidden_size))

    def forward(self, x):
        return self.mlp(self.ln_q(x).view(-1, self.group))


class VisionTransformer(nn.Module):
    """pixel rows (N, C*T*P*P) + grid_thw (n, 3) -> one decoder-width feature per merged token (N / 4, out)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def rotary(self, grid_thw, device):
        """cos, sin (N, Dh): the first half of the head's frequencies rotates by row, the second by column."""
        half = self.cfg.hidden_size // self.cfg.num_heads // 2
        inv_freq = 1.0 / 10000 ** (torch.arange(0, half, 2, dtype=torch.float, device=device) / half)
        rc = patch_positions(grid_thw, self.cfg.spatial_merge_size).to(device)
        angles = (rc[:, :, None].float() * inv_freq).flatten(1)  # (N, 2, Dh/4) -> (N, Dh/2)
        angles = torch.cat([angles, angles], -1)
        return angles.cos()[:, None], angles.sin()[:, None]  # (N, 1, Dh): broadcast over heads

    def forward(self, pixel_values, grid_thw):
        cfg, dev = self.cfg, pixel_values.device
        unit = cfg.spatial_merge_size ** 2
        grid_thw = grid_thw.cpu()
        n = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != n:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows but grid_thw describes {n} "
                             f"({grid_thw.tolist()}); pass the grid the processor returned with these pixels.")
        order, win_lengths = window_order(grid_thw, cfg.spatial_merge_size,
                                          cfg.window_size // cfg.spatial_merge_size // cfg.patch_size)
        order = order.to(dev)
        # Reorder whole merge groups so each window's patches are contiguous (the merger needs groups intact).
        perm = (order[:, None] * unit + torch.arange(unit, device=dev)).flatten()
        x = self.patch_embed(pixel_values)[perm]                   # (N, D) in window order
        cos, sin = (t[perm] for t in self.rotary(grid_thw, dev))
        windows = segment_batch(win_lengths, dev)
        frames = segment_batch((grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0]).tolist(), dev)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, frames if i in cfg.fullatt_block_indexes else windows)
        merged = self.merger(x)                                    # (N / unit, out) in window order
        return merged[torch.argsort(order)]                         # back to the processor's order
