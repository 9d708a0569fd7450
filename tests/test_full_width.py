"""Parity with transformers at Qwen2.5-VL-3B's real widths, cut to 2 decoder layers and 2 vision blocks.

test_model_parity.py covers the logic on tiny configs; this covers what only the real shapes have: the tied
151,936-row embedding, head_dim 128 with M-RoPE sections 16/24/24 and 2 kv heads, the 11,008-wide MLP, the
1280-wide vision tower with 16 heads and 112 px windows (block 1 attends over whole frames). The config is the
`qwen2.5-vl-3b` preset with fewer layers; mmduet2 makes random weights and saves them, transformers loads them.
float32; one image larger than a window (6x10 merged tokens: partial windows at two edges) and a video with
second_per_grid_ts 1.5, compared as one forward and streamed through mmduet2's KV cache (two chunks, then three
decoded tokens). 2.2 GB of weights per model, two at the peak (5.2 GB resident); 26 s on one core of the
project's 2-core CPU, niced beside a training run.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from mmduet2.config import preset  # noqa: E402
from mmduet2.model import MMDuet2  # noqa: E402
from test_model_parity import PATCH, assert_close, run_ours, run_reference  # noqa: E402

CFG = preset("qwen2.5-vl-3b", num_hidden_layers=2, depth=2, fullatt_block_indexes=(1,))
VS, VE, IMG, VID = CFG.vision_start_token_id, CFG.vision_end_token_id, CFG.image_token_id, CFG.video_token_id


@pytest.fixture(scope="module")
def ours_and_want(tmp_path_factory):
    """Our model with random weights, and the reference's logits over the whole dialogue (`whole`) on the same
    weights: saved by mmduet2, loaded by transformers (the tiny tests check the other direction too)."""
    torch.manual_seed(0)
    ours = MMDuet2.random(CFG).eval()  # normal(0, 0.02) weights, made without a float32 init pass first
    with torch.no_grad():  # norm weights and biases move off 1 and 0 so that they matter
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight and ours.lm_head.weight.shape == (151936, 2048)
    path = tmp_path_factory.mktemp("full_width")
    ours.save_pretrained(path)
    ref = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())  # 543 M
    ids, vision = whole()
    return ours, run_reference(ref, ids, **vision)


def pieces():
    """[(ids, vision kwargs)]: text and an image of 12x20 patches; text, a video of 2x8x12 patches at 1.5 s per
    temporal patch, text; then three single decoded tokens."""
    g = torch.Generator().manual_seed(1)
    image = dict(pixel_values=torch.randn(12 * 20, PATCH, generator=g), image_grid_thw=torch.tensor([[1, 12, 20]]))
    video = dict(pixel_values_videos=torch.randn(2 * 8 * 12, PATCH, generator=g),
                 video_grid_thw=torch.tensor([[2, 8, 12]]), second_per_grid_ts=torch.tensor([1.5]))
    return [([101, 102, 103, VS] + [IMG] * 60 + [VE], image),
            ([104, 105, VS] + [VID] * 48 + [VE, 106, 107], video),
            ([108], {}), ([109], {}), ([110], {})]


def whole():
    ids = torch.tensor([sum((p[0] for p in pieces()), [])])
    vision = {k: v for _, kw in pieces() for k, v in kw.items()}
    return ids, vision


def test_one_forward_equals_reference(ours_and_want):
    ours, want = ours_and_want
    ids, vision = whole()
    assert_close(want, run_ours(ours, ids, **vision))


def test_streamed_equals_reference(ours_and_want):
    ours, want = ours_and_want
    cache = ours.new_cache(1, max_len=64)  # small, so it grows while streaming
    streamed = torch.cat([run_ours(ours, torch.tensor([chunk]), cache=cache, **kw) for chunk, kw in pieces()], 1)
    assert cache.length == want.shape[1]
    assert_close(want, streamed)
