"""Parity with the reference: transformers' Qwen2_5_VLForConditionalGeneration on tiny random configs.

The reference builds and saves each model; mmduet2 loads the save and must give the same logits (float32,
max abs diff <= 1e-4), for text, several images per turn (with partial attention windows), a video with
second_per_grid_ts != 1, batches with padding, tied and untied heads and both config.json layouts. The other
direction too: transformers loads what mmduet2 saves.
"""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from mmduet2.config import load_config  # noqa: E402
from mmduet2.model import MMDuet2, get_rope_index  # noqa: E402

IMG, VID, VS, VE = 290, 291, 292, 293
PATCH = 3 * 2 * 14 * 14
TOL = 1e-4


def reference(tie=True, window=56, tps=2, seed=0):
    """A tiny random Qwen2.5-VL from transformers, weights perturbed so every parameter matters."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3]), bos_token_id=None,
                         eos_token_id=None),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=window, tokens_per_second=tps),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=tie)
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def run_reference(model, ids, mask=None, **vision):
    types = torch.zeros_like(ids)
    types[ids == model.config.image_token_id], types[ids == model.config.video_token_id] = 1, 2
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **vision).logits


def run_ours(model, ids, mask=None, **vision):
    with torch.no_grad():
        return model(ids, attention_mask=mask, **vision)


def image(n):
    return [VS] + [IMG] * n + [VE]


def multimodal_batch():
    """Row 0: two images in one turn (6 and 15 tokens; 3x5 merged tokens leave partial 2x2 windows), then a
    video (2 temporal patches, 1.5 s each); row 1: one image, left-padded. Grids in row-major order."""
    torch.manual_seed(1)
    row0 = [1, 2, 3] + image(6) + image(15) + [5, 6, VS] + [VID] * 32 + [VE, 7, 8, 9]
    row1 = [4, 4] + image(15) + [10, 11, 12]
    pad = len(row0) - len(row1)
    ids = torch.tensor([row0, [0] * pad + row1])
    mask = torch.tensor([[1] * len(row0), [0] * pad + [1] * len(row1)])
    grid = torch.tensor([[1, 4, 6], [1, 6, 10], [1, 6, 10]])
    vision = dict(pixel_values=torch.randn(int(grid.prod(-1).sum()), PATCH), image_grid_thw=grid,
                  pixel_values_videos=torch.randn(2 * 8 * 8, PATCH), video_grid_thw=torch.tensor([[2, 8, 8]]),
                  second_per_grid_ts=torch.tensor([1.5]))
    return ids, mask, vision


def assert_close(ref, out, mask=None):
    if mask is not None:
        ref, out = ref[mask.bool()], out[mask.bool()]
    diff = (ref - out).abs().max().item()
    assert diff <= TOL, f"max abs logit diff {diff}"


@pytest.mark.parametrize("tie", [True, False])
def test_text_only(tmp_path, tie):
    ref = reference(tie=tie)
    ref.save_pretrained(tmp_path)
    ours = MMDuet2.from_pretrained(tmp_path).eval()
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    ids = torch.randint(0, 280, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    assert_close(run_reference(ref, ids), run_ours(ours, ids))
    assert_close(run_reference(ref, ids, mask), run_ours(ours, ids, mask), mask)


def test_images_video_and_padding(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path)
    ours = MMDuet2.from_pretrained(tmp_path).eval()
    ids, mask, vision = multimodal_batch()
    assert_close(run_reference(ref, ids, mask, **vision), run_ours(ours, ids, mask, **vision), mask)
    # Row 0 alone, unpadded: the same as in the batch (vision features land on the right row).
    one = {k: vision[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    one.update(pixel_values=vision["pixel_values"][:24 + 60], image_grid_thw=vision["image_grid_thw"][:2])
    assert_close(run_reference(ref, ids[:1], **one), run_ours(ours, ids[:1], **one))


def test_rope_index_equals_reference(tmp_path):
    ref = reference()
    ids, mask, vision = multimodal_batch()
    types = torch.zeros_like(ids)
    types[ids == IMG], types[ids == VID] = 1, 2
    want, _ = ref.model.get_rope_index(ids, types, vision["image_grid_thw"], vision["video_grid_thw"],
                                       vision["second_per_grid_ts"], attention_mask=mask)
    ref.save_pretrained(tmp_path)
    got, next_pos = get_rope_index(load_config(tmp_path), ids, vision["image_grid_thw"], vision["video_grid_thw"],
                                   vision["second_per_grid_ts"], attention_mask=mask)
    assert torch.equal(got[:, mask.bool()], want[:, mask.bool()])
    assert next_pos.tolist() == [int(want[:, 0].max()) + 1, int(want[:, 1].max()) + 1]


def flatten_config(d):
    """The original hub layout: text fields at the top level, rope_scaling.mrope_section, in_chans."""
    flat = {k: v for k, v in d.items() if k != "text_config"}
    text = dict(d["text_config"])
    rope = text.pop("rope_parameters")
    flat.update({k: v for k, v in text.items() if k != "model_type"})
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["vision_config"] = dict(d["vision_config"])
    flat["vision_config"]["in_chans"] = flat["vision_config"].pop("in_channels")
    return flat


def test_flat_config_layout(tmp_path):
    ref = reference(tie=False)
    ref.save_pretrained(tmp_path)
    nested = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" in nested  # transformers 5 writes the nested layout
    (tmp_path / "config.json").write_text(json.dumps(flatten_config(nested)))
    ours = MMDuet2.from_pretrained(tmp_path).eval()
    ids, mask, vision = multimodal_batch()
    assert_close(run_reference(ref, ids, mask, **vision), run_ours(ours, ids, mask, **vision), mask)


@pytest.mark.parametrize("tie, max_shard_size", [(True, None), (False, 100_000)])
def test_transformers_loads_our_save(tmp_path, tie, max_shard_size):
    ref = reference(tie=tie)
    ref.save_pretrained(tmp_path / "ref")
    ours = MMDuet2.from_pretrained(tmp_path / "ref").eval()
    ours.save_pretrained(tmp_path / "ours", max_shard_size=max_shard_size)
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists() == bool(max_shard_size)
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert "text_config" not in saved and saved["rope_scaling"]["mrope_section"] == [2, 3, 3]
    back = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids, mask, vision = multimodal_batch()
    want = run_ours(ours, ids, mask, **vision)
    assert (run_reference(back, ids, mask, **vision) - want)[mask.bool()].abs().max().item() <= 1e-5
