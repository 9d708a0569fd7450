"""The streaming KV cache: every way of feeding a dialogue through one cache gives the logits of one full forward.

Chunks with frames, one-token decoding, expand to an RL group, padded rows and finished rows, rewind and
re-append. Ground truth is always the model's own uncached forward over the same tokens.
"""
import pytest
import torch

from mmduet2.config import preset
from mmduet2.model import get_rope_index

TOL = 1e-5
CFG = preset("toy")
VS, VE, IMG, VID = CFG.vision_start_token_id, CFG.vision_end_token_id, CFG.image_token_id, CFG.video_token_id
FRAME = 16  # 112x112 px = 8x8 patches -> 16 merged tokens


def frames(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * 64, 3 * 2 * 14 * 14, generator=g), torch.tensor([[1, 8, 8]] * n)


def turn(text, n_frames):
    return [10, 11] + ([VS] + [IMG] * FRAME + [VE]) * n_frames + text + [12, 13]


def full(model, ids, pixels=None, grids=None):
    """Uncached logits (T, V) of one row."""
    with torch.no_grad():
        return model(torch.tensor([ids]), pixel_values=pixels, image_grid_thw=grids)[0]


def stream(model, cache, pieces, row=None):
    """Feed [(ids, pixels, grids)] chunk by chunk to a batch-1 cache; returns the concatenated logits (T, V)."""
    out = []
    with torch.no_grad():
        for ids, pv, grid in pieces:
            out.append(model(torch.tensor([ids]), pixel_values=pv, image_grid_thw=grid, cache=cache)[0])
    return torch.cat(out)


def dialogue():
    """Three turns of 2 frames each, replies of 3 decoded tokens fed one at a time."""
    pieces = []
    for k in range(3):
        pv, grid = frames(2, seed=k)
        pieces.append((turn([20 + k, 21], 2), pv, grid))
        pieces += [([30 + k + j], None, None) for j in range(3)]
    return pieces


def concat(pieces):
    ids = sum((p[0] for p in pieces), [])
    pvs = [p[1] for p in pieces if p[1] is not None]
    grids = [p[2] for p in pieces if p[2] is not None]
    return ids, (torch.cat(pvs) if pvs else None), (torch.cat(grids) if grids else None)


def close(a, b):
    return (a - b).abs().max().item() <= TOL


def test_chunks_and_decoding_equal_one_forward(model):
    pieces = dialogue()
    cache = model.new_cache(1, max_len=8)  # tiny, so it must grow several times
    got = stream(model, cache, pieces)
    want = full(model, *concat(pieces))
    assert cache.length == len(want) and cache.capacity >= cache.length
    assert close(got, want)
    ids, _, grids = concat(pieces)
    assert torch.equal(cache.next_pos, get_rope_index(CFG, torch.tensor([ids]), grids)[1])
    assert cache.next_pos.item() < len(ids)  # a 4x4-token frame spans only 4 ids


def test_expand_then_different_rows_equal_independent_runs(model):
    prefix = dialogue()[:4]
    cache = model.new_cache(1)
    stream(model, cache, prefix)
    cache.expand(3)
    assert cache.batch_size == 3
    pv, grid = frames(2, seed=9)
    chunks = [turn([40 + r] * (r + 1), 2) for r in range(3)]  # equal lengths would hide a row mix-up; pad instead
    width = max(map(len, chunks))
    ids = torch.tensor([[0] * (width - len(c)) + c for c in chunks])
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunks])
    with torch.no_grad():
        got = model(ids, attention_mask=mask, pixel_values=pv.repeat(3, 1), image_grid_thw=grid.repeat(3, 1),
                    cache=cache)
        steps = [model(torch.tensor([[50 + r] for r in range(3)]), cache=cache) for _ in range(2)]
    for r in range(3):
        want = full(model, *concat(prefix + [(chunks[r], pv, grid), ([50 + r], None, None), ([50 + r], None, None)]))
        n = len(chunks[r])
        assert close(got[r, width - n:], want[-n - 2:-2])
        assert close(steps[0][r, 0], want[-2]) and close(steps[1][r, 0], want[-1])


def test_padded_and_finished_rows_equal_unpadded_runs(model):
    """Row 0's chunk is shorter (left padding, plus a pad in the middle); then row 0 has finished decoding and
    feeds masked pads while row 1 decodes on. Each row must equal its own batch-1 run."""
    pv, grid = frames(2, seed=3)
    rows = [turn([60], 1), turn([61, 62, 63, 64], 1)]
    ids = torch.tensor([[0, 0] + rows[0][:3] + [0] + rows[0][3:], rows[1]])
    mask = (ids != 0).long()
    mask[1] = 1
    cache = model.new_cache(2)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid, cache=cache)
        d1 = model(torch.tensor([[70], [71]]), cache=cache)
        d2 = model(torch.tensor([[0], [72]]), attention_mask=torch.tensor([[0], [1]]), cache=cache)
        d3 = model(torch.tensor([[73], [74]]), cache=cache)
    assert cache.next_pos.tolist() == [len(rows[0]) - 12 + 2, len(rows[1]) - 12 + 3]  # 16 frame tokens span 4 ids
    want0 = full(model, rows[0] + [70, 73], pv[:64], grid[:1])
    want1 = full(model, rows[1] + [71, 72, 74], pv[64:], grid[1:])
    assert close(got[0][mask[0].bool()], want0[:-2]) and close(got[1], want1[:-3])
    assert close(d1[0, 0], want0[-2]) and close(d3[0, 0], want0[-1])
    assert close(d1[1, 0], want1[-3]) and close(d2[1, 0], want1[-2]) and close(d3[1, 0], want1[-1])


def test_rewind_then_reappend_equals_never_appended(model):
    """Slots past `length` are dead: a cache cut back to an earlier length (and next id) goes on as if the chunks
    after it had never been appended."""
    pieces = dialogue()
    cache = model.new_cache(1)
    stream(model, cache, pieces[:4])
    length, next_pos = cache.length, cache.next_pos.clone()
    # A video whose temporal ids (0, 8) outgrow its 4x4 merged grid: VS at p, the video at p+1 .. p+9, VE at p+10.
    pvv = torch.randn(2 * 64, 3 * 2 * 14 * 14)
    with torch.no_grad():
        model(torch.tensor([[VS] + [VID] * 32 + [VE]]), pixel_values_videos=pvv,
              video_grid_thw=torch.tensor([[2, 8, 8]]), second_per_grid_ts=torch.tensor([4.0]), cache=cache)
    assert cache.next_pos.item() - next_pos.item() == 11
    cache.length, cache.next_pos = length, next_pos
    cache.valid[:, length:] = False
    got = stream(model, cache, pieces[4:])
    fresh = model.new_cache(1)
    stream(model, fresh, pieces[:4])
    assert close(got, stream(model, fresh, pieces[4:]))


def test_batch_size_mismatch_is_a_clear_error(model):
    with pytest.raises(ValueError, match="expand"):
        model(torch.tensor([[1], [2]]), cache=model.new_cache(1))
