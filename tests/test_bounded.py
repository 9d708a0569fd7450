"""The bounded cache (StreamConfig.window, KVCache.evict): after evictions the next chunk's logits equal a fresh
forward over exactly the kept tokens at their original M-RoPE ids, rows may evict at different points, and the
Streamer keeps the sink, the last `window` seconds of frames and whole earlier turns' text within its budget."""
import numpy as np
import pytest
import torch

from mmduet2.config import preset
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT, user_chunk_ids
from mmduet2.model import MMDuet2, get_rope_index
from mmduet2.processor import process_images
from mmduet2.stream import StreamConfig, Streamer
from mmduet2.tokenizer import train_toy_tokenizer

CFG = preset("toy")
VS, VE, IMG = CFG.vision_start_token_id, CFG.vision_end_token_id, CFG.image_token_id
QUESTION = "Tell me every time a red shape appears."


def row_pieces(r):
    """Row r's dialogue: 4 turns of 2 frames (112x112 px, 16 tokens each) and user text, each followed by a
    3-token reply fed one token at a time. Returns [(ids, pixels or None)]."""
    pieces = []
    for k in range(4):
        pv = torch.randn(2 * 64, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(10 * r + k))
        pieces.append(([10, 11] + ([VS] + [IMG] * 16 + [VE]) * 2 + [20 + k + r, 21, 12, 13], pv))
        pieces += [([30 + k + j + 5 * r], None) for j in range(3)]
    return pieces


def forward_seeing(model, ids, pixels, visible):
    """Uncached logits (T, V) of one row whose token q attends to the tokens k with visible[q, k] (T, T) bool."""
    ids, grids = torch.tensor([ids]), torch.tensor([[1, 8, 8]] * (len(pixels) // 64))
    pos, _ = get_rope_index(CFG, ids, grids)
    x = model._insert_vision(model.model.embed_tokens(ids), ids, None, pixels, grids, None, None)
    return model.lm_head(model.model(x, pos, visible[None, None])).float()[0]


def test_evicted_cache_equals_a_forward_that_sees_only_the_kept_tokens(model):
    """Two rows evict different tokens at different turns (frames, one frame of two, decoded replies). A token's
    keys and values were computed while everything before it was cached, so the ground truth is one uncached
    forward over the whole dialogue, at its own M-RoPE ids, in which every token sees exactly the tokens the cache
    held when it was fed: every later chunk and decoded token must match it."""
    rows = [row_pieces(0), row_pieces(1)]
    seqs = [sum((ids for ids, _ in p), []) for p in rows]
    # what token j of row r is: (turn, frame of the row or -1, decoded), and the piece that fed it
    info, fed_at = [[] for _ in rows], []
    for r, pieces in enumerate(rows):
        for n, (ids, _) in enumerate(pieces):
            frame = np.cumsum([t == VS for t in ids]) - 1 + 2 * (n // 4)
            info[r] += [(n // 4, int(f) if t in (VS, IMG, VE) else -1, len(ids) == 1) for t, f in zip(ids, frame)]
            fed_at += [n] * len(ids) if r == 0 else []
    drop = {3: [lambda k, f, d: f == 0, lambda k, f, d: False],                          # after turn 0's reply
            7: [lambda k, f, d: f == 1 or (k == 1 and d), lambda k, f, d: k == 0 and (f >= 0 or d)],
            11: [lambda k, f, d: False, lambda k, f, d: k == 1 and f >= 0]}
    cache = model.new_cache(2, max_len=512)  # large enough never to grow: eviction must not reallocate
    buffer = cache.k[0].data_ptr()
    slots = [[], []]  # per row, which token of its sequence each cache slot holds (None: an invalid slot)
    evicted_at = [[len(rows[0])] * len(seqs[0]) for _ in rows]
    fed, got = 0, []
    with torch.no_grad():
        for n in range(len(rows[0])):
            (ids0, pv0), (ids1, pv1) = rows[0][n], rows[1][n]
            got.append(model(torch.tensor([ids0, ids1]), cache=cache,
                             pixel_values=None if pv0 is None else torch.cat([pv0, pv1]),
                             image_grid_thw=None if pv0 is None else torch.tensor([[1, 8, 8]] * 4)))
            slots = [s + list(range(fed, fed + len(ids0))) for s in slots]
            fed += len(ids0)
            if n in drop:
                for r in range(2):
                    for j in range(fed):
                        if evicted_at[r][j] == len(rows[0]) and drop[n][r](*info[r][j]):
                            evicted_at[r][j] = n
                length = cache.length
                cache.evict(torch.tensor([[s is not None and evicted_at[r][s] > n for s in slots[r]]
                                          for r in range(2)]))
                slots = [[s for s in slots[r] if s is not None and evicted_at[r][s] > n] for r in range(2)]
                assert cache.length == max(map(len, slots)) and min(map(len, slots)) < length
                slots = [s + [None] * (cache.length - len(s)) for s in slots]
    assert cache.k[0].data_ptr() == buffer and cache.capacity == 512
    assert cache.length < len(seqs[0]) and slots[0].count(None) != slots[1].count(None)
    got = torch.cat(got, 1)  # (2, T, V)
    fed_at = torch.tensor(fed_at)
    for r in range(2):
        causal = torch.tril(torch.ones(len(fed_at), len(fed_at), dtype=torch.bool))
        visible = causal & (torch.tensor(evicted_at[r])[None, :] >= fed_at[:, None])
        with torch.no_grad():
            want = forward_seeing(model, seqs[r], torch.cat([pv for _, pv in rows[r] if pv is not None]), visible)
        assert (got[r] - want).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def setup():
    tok = train_toy_tokenizer([SYSTEM_PROMPT, QUESTION, NO_REPLY, "A red circle appeared."], vocab_size=400)
    cfg = preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
                 vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return MMDuet2(cfg).eval(), tok, [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(40)]


def play(model, tok, frames, cfg, turns):
    s = Streamer(model, tok, cfg)
    for k in range(turns):
        s.step(frames[2 * k:2 * k + 2], QUESTION if k == 0 else None)
    return s


def test_streamer_keeps_the_sink_the_window_and_the_newest_whole_turns(setup):
    model, tok, frames = setup
    cfg = StreamConfig(max_new_tokens=3, window=6.0, text_budget=40)
    s, sizes, counts = Streamer(model, tok, cfg), [], {}
    tpf = int(process_images(frames[:1])[1][0].prod()) // 4
    first = [t for t in user_chunk_ids(tok, True, 2, tpf, QUESTION) if t not in s.vision_ids.tolist()]
    for k in range(20):
        s.step(frames[2 * k:2 * k + 2], QUESTION if k == 0 else None)
        sizes.append((s.cache.length, s.cache.capacity))
        tag = s.cache.tag[0, :s.cache.length][s.cache.valid[0, :s.cache.length]]
        shown = sorted(set(tag[tag > 0].tolist()))
        assert shown == list(range(max(1, 2 * k - 3), 2 * k + 3))  # frames of the last 6 s (this turn's too)
        assert (tag == 0).sum() == len(first)                       # the sink: system prompt and question
        now = 2 * k + 2
        counts[now] = int((tag == -now).sum())  # this turn's text is complete (its closing token goes with the next)
        earlier = sorted(set((-tag[(tag < 0) & (tag != -now)]).tolist()))
        assert sum(counts[c] for c in earlier) <= 40                 # earlier turns' text within the budget...
        assert all(int((tag == -c).sum()) == counts[c] for c in earlier)  # ...each turn whole...
        assert earlier == list(range(now - 2 * len(earlier), now, 2))   # ...the newest ones
        assert k < 4 or sum(counts[c] for c in earlier) + counts[now - 2 * len(earlier) - 2] > 40  # no room for more
    assert len({cap for _, cap in sizes[8:]}) == 1                 # no growth once full
    assert max(n for n, _ in sizes[8:]) - min(n for n, _ in sizes[8:]) <= 16
    full = play(model, tok, frames, StreamConfig(max_new_tokens=3), 20)
    assert s.cache.length < full.cache.length / 2


def test_a_window_that_holds_everything_streams_like_the_full_cache(setup):
    model, tok, frames = setup
    full = play(model, tok, frames, StreamConfig(max_new_tokens=3), 8)
    wide = play(model, tok, frames, StreamConfig(max_new_tokens=3, window=1000.0, text_budget=10 ** 6), 8)
    assert wide.rows[0].ids == full.rows[0].ids and wide.cache.length == full.cache.length


def test_rows_of_different_videos_evict_on_their_own_clocks(setup):
    """Streamer.concat of two rows, one of which sits out turns: each keeps the frames of its own last window."""
    model, tok, frames = setup
    cfg = StreamConfig(max_new_tokens=2, window=4.0, text_budget=30)
    s = Streamer.concat([Streamer(model, tok, cfg), Streamer(model, tok, cfg)])
    for k in range(8):
        s.step_rows([frames[2 * k:2 * k + 2], frames[2 * k:2 * k + 2] if k % 2 == 0 else None],
                    [QUESTION if k == 0 else None] * 2, [None] * 2)
    for r, last in ((0, 16), (1, 8)):
        tag = s.cache.tag[r, :s.cache.length][s.cache.valid[r, :s.cache.length]]
        assert sorted(set(tag[tag > 0].tolist())) == list(range(last - 3, last + 1))


def test_bad_bounds_are_one_sentence():
    for field in ("window", "text_budget"):
        with pytest.raises(ValueError, match=rf"StreamConfig.{field}=-1 \(--{field.replace('_', '-')}\) must not"):
            StreamConfig(**{field: -1})
