"""Config reading and writing, M-RoPE ids by hand, checkpoint round trips and the errors a user can cause."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmduet2.config import ModelConfig, load_config, preset
from mmduet2.model import MMDuet2, get_rope_index

CFG = preset("toy")
VS, VE, IMG, VID = CFG.vision_start_token_id, CFG.vision_end_token_id, CFG.image_token_id, CFG.video_token_id
PATCH = 3 * 2 * 14 * 14


def toy_model(**overrides):
    torch.manual_seed(0)
    m = MMDuet2(preset("toy", **overrides)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


# ------------------------------------------------------------------------------------------------------- config
def test_presets_and_overrides():
    toy = preset("toy", vocab_size=300, image_token_id=7, video_token_id=8, vision_start_token_id=5,
                 vision_end_token_id=6, vision_hidden_size=32, text_intermediate_size=64, depth=1,
                 fullatt_block_indexes=(0,))
    assert (toy.text.vocab_size, toy.image_token_id, toy.vision.hidden_size, toy.vision.depth) == (300, 7, 32, 1)
    assert toy.text.intermediate_size == 64 and toy.vision.intermediate_size == CFG.vision.intermediate_size
    big = preset("qwen2.5-vl-3b")
    assert (big.text.head_dim, big.vision.fullatt_block_indexes, big.tie_word_embeddings) == (128, (7, 15, 23, 31), True)
    assert preset("qwen2.5-vl-7b").text.hidden_size == preset("qwen2.5-vl-7b").vision.out_hidden_size == 3584
    with pytest.raises(ValueError, match="ambiguous"):
        preset("toy", hidden_size=64)
    with pytest.raises(ValueError, match="unknown"):
        preset("toy", n_layers=2)
    with pytest.raises(ValueError, match="Unknown preset"):
        preset("qwen3")
    with pytest.raises(ValueError, match="vocab_size"):
        preset("toy", vocab_size=300)  # the toy's special-token ids (500..503) no longer fit


# The shape-deciding fields of config.json of Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct on the hub
# (the rest of those files: token ids equal to the defaults, and fields nothing here reads).
HUB_VISION = {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
              "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
              "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2}
HUB_TEXT = {"model_type": "qwen2_5_vl", "hidden_act": "silu", "max_position_embeddings": 128000, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "use_sliding_window": False,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
HUB_3B = dict(HUB_TEXT, hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_hidden_layers=36,
              num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936,
              vision_config=dict(HUB_VISION, out_hidden_size=2048))
HUB_7B = dict(HUB_TEXT, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_hidden_layers=28,
              num_key_value_heads=4, tie_word_embeddings=False, vocab_size=152064,
              vision_config=dict(HUB_VISION, out_hidden_size=3584))


@pytest.mark.parametrize("name, hub, billions", [("qwen2.5-vl-3b", HUB_3B, 3.75), ("qwen2.5-vl-7b", HUB_7B, 8.29)])
def test_real_presets_equal_the_hub_configs(name, hub, billions):
    assert ModelConfig.from_hf(hub) == preset(name)
    with torch.device("meta"):
        model = MMDuet2(preset(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions  # 3.75 B and 8.29 B parameters


def hub_dict():
    return preset("qwen2.5-vl-3b").to_hf()


def test_both_layouts_read_alike():
    flat = hub_dict()
    assert ModelConfig.from_hf(flat) == preset("qwen2.5-vl-3b")
    nested = {k: v for k, v in flat.items() if k in ("model_type", "vision_config", "image_token_id",
                                                     "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    nested["text_config"] = {k: flat[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                  "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")}
    nested["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    nested["vision_config"] = dict(flat["vision_config"])
    nested["vision_config"]["in_chans"] = nested["vision_config"].pop("in_channels")
    assert ModelConfig.from_hf(nested) == preset("qwen2.5-vl-3b")
    # transformers 4.5x wrote both at once: the flat fields plus a text_config copy with its own rope_scaling.
    hybrid = dict(flat, text_config=dict(nested["text_config"], model_type="qwen2_5_vl_text", video_token_id=None,
                                         rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default",
                                                       "type": "default"}))
    assert ModelConfig.from_hf(hybrid) == preset("qwen2.5-vl-3b")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(model_type="qwen2_vl"), "supports only 'qwen2_5_vl'"),
    (lambda d: d.pop("hidden_size"), "missing hidden_size"),
    (lambda d: d.pop("rope_scaling"), "missing mrope_section"),
    (lambda d: d["vision_config"].pop("depth"), "missing vision_config.depth"),
    (lambda d: d.update(text_config={"hidden_size": 1024}), "hidden_size twice"),
    (lambda d: d.update(rope_parameters={"mrope_section": [8, 28, 28]}), "gives mrope_section as"),
    (lambda d: d.update(rope_scaling={"rope_type": "yarn", "mrope_section": [16, 24, 24]}), "rope type 'yarn'"),
    (lambda d: d["vision_config"].update(in_chans=4), "in_chans 4 and in_channels 3"),
    (lambda d: d.update(rope_scaling={"type": "mrope", "mrope_section": [16, 16, 16]}), "head_dim / 2 = 64"),
    (lambda d: d["vision_config"].update(out_hidden_size=1024), "out_hidden_size 1024"),
    (lambda d: d.update(use_sliding_window=True), "use_sliding_window"),
])
def test_bad_configs_name_the_problem(edit, message):
    d = hub_dict()
    edit(d)
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(d)


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------------------------------- M-RoPE ids
def test_rope_index_by_hand():
    """Text 0, 1; VS 2; a 2x2-token image all at t=3 with h, w = 3 + row/col; VE 5; then a video of 3 temporal
    patches, 1 s each, 2 tokens per second: t = 7 + (0, 2, 4), h/w = 7 + row/col; VE one past the largest id
    (12), not 7 + max(h, w) = 9 as transformers 5 would give."""
    ids = torch.tensor([[1, 2, VS] + [IMG] * 4 + [VE, VS] + [VID] * 12 + [VE, 3]])
    pos, next_pos = get_rope_index(CFG, ids, torch.tensor([[1, 4, 4]]), torch.tensor([[3, 4, 4]]), [1.0])
    img = [[3] * 4, [3, 3, 4, 4], [3, 4, 3, 4]]
    vid = [[7] * 4 + [9] * 4 + [11] * 4, [7, 7, 8, 8] * 3, [7, 8, 7, 8] * 3]
    want = [[0, 1, 2] + img[a] + [5, 6] + vid[a] + [12, 13] for a in range(3)]
    assert pos[:, 0].tolist() == want and next_pos.tolist() == [14]
    # Padding advances nothing, and `start` continues a row from a cache.
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
    mask = torch.tensor([[0, 0] + [1] * ids.shape[1]])
    pos2, next2 = get_rope_index(CFG, padded, torch.tensor([[1, 4, 4]]), torch.tensor([[3, 4, 4]]), [1.0],
                                 attention_mask=mask, start=torch.tensor([100]))
    assert torch.equal(pos2[:, 0, 2:], pos[:, 0] + 100) and next2.tolist() == [114]


def test_pad_count_mismatch_is_a_clear_error():
    model = toy_model()
    ids = torch.tensor([[1, VS] + [IMG] * 15 + [VE]])
    with pytest.raises(ValueError, match="hold 15 <\\|image_pad\\|> tokens but image_grid_thw .* needs 16"):
        model(ids, pixel_values=torch.randn(64, PATCH), image_grid_thw=torch.tensor([[1, 8, 8]]))
    with pytest.raises(ValueError, match="hold 1 <\\|video_pad\\|> tokens"):
        model(torch.tensor([[1, VID]]))
    with pytest.raises(ValueError, match="together"):
        model(torch.tensor([[1, VS] + [IMG] * 16 + [VE]]), image_grid_thw=torch.tensor([[1, 8, 8]]))


# --------------------------------------------------------------------------------------------------- checkpoints
def sample_inputs():
    torch.manual_seed(2)
    ids = torch.tensor([[1, 2, VS] + [IMG] * 16 + [VE, 3, 4]])
    return ids, dict(pixel_values=torch.randn(64, PATCH), image_grid_thw=torch.tensor([[1, 8, 8]]))


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path, tie):
    model = toy_model(tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    assert ("lm_head.weight" in load_file(tmp_path / "model.safetensors")) != tie
    back = MMDuet2.from_pretrained(tmp_path).eval()
    ids, vision = sample_inputs()
    with torch.no_grad():
        assert torch.equal(model(ids, **vision), back(ids, **vision))
    half = MMDuet2.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and (half.lm_head.weight is half.model.embed_tokens.weight) == tie


def test_truncated_safetensors_is_one_sentence(tmp_path):
    toy_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    for size in (len(data) // 2, 5):  # cut inside the tensors, and inside the header's length field
        weights.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"model.safetensors is not a complete safetensors file .*download it "
                                             r"again, or re-save the checkpoint"):
            MMDuet2.from_pretrained(tmp_path)


def test_shards_and_newer_key_prefixes(tmp_path):
    """A sharded checkpoint whose writer nests keys under model.language_model. / model.visual. loads the same."""
    model = toy_model()
    model.save_pretrained(tmp_path / "a")
    state = load_file(tmp_path / "a" / "model.safetensors")
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else "model." + k): v
               for k, v in state.items()}
    keys = sorted(renamed)
    shards = {"model-00001-of-00002.safetensors": keys[:len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    (tmp_path / "b").mkdir()
    for name, part in shards.items():
        save_file({k: renamed[k] for k in part}, tmp_path / "b" / name)
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / "b" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    back = MMDuet2.from_pretrained(tmp_path / "b").eval()
    ids, vision = sample_inputs()
    with torch.no_grad():
        assert torch.equal(model(ids, **vision), back(ids, **vision))


def test_sharded_save_writes_the_hub_index(tmp_path):
    model = toy_model(tie_word_embeddings=False)
    state = model.state_dict()
    biggest = max(v.numel() * v.element_size() for v in state.values())
    model.save_pretrained(tmp_path, max_shard_size=biggest)  # every shard holds at most the largest tensor
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    n = len(set(index["weight_map"].values()))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert n > 2 and names == sorted(["config.json", "model.safetensors.index.json"]
                                     + [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)])
    assert sorted(index["weight_map"]) == sorted(state) and list(index["weight_map"]) == sorted(state)
    assert index["metadata"] == {"total_size": sum(v.numel() * v.element_size() for v in state.values())}
    for name in set(index["weight_map"].values()):
        shard = load_file(tmp_path / name)
        assert sum(v.numel() * v.element_size() for v in shard.values()) <= biggest
        assert all(index["weight_map"][k] == name and torch.equal(v, state[k]) for k, v in shard.items())
    back = MMDuet2.from_pretrained(tmp_path).eval()
    ids, vision = sample_inputs()
    with torch.no_grad():
        assert torch.equal(model(ids, **vision), back(ids, **vision))
    # Saved again unsharded into the same folder: the shards and the index go, so nothing stale is loaded.
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_mismatched_checkpoint_lists_every_problem(tmp_path):
    toy_model().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    state["visual.merger.mlp.0.bias"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        MMDuet2.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing model.layers.0.mlp.up_proj.weight" in msg
    assert "unexpected model.layers.0.mlp.extra.weight" in msg
    assert "visual.merger.mlp.0.bias has shape (3,), the config needs (256,)" in msg
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MMDuet2.from_pretrained(tmp_path)
