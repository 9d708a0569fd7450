"""Model configuration: the Qwen2.5-VL shapes as small dataclasses, read from and written to a hub config.json.

MMDuet2 keeps Qwen2.5-VL-3B unchanged (docs/method.md section 2), so the config is Qwen's. Two config.json layouts
occur on the hub: the original one (text fields flat at the top level, `rope_scaling.mrope_section`,
`vision_config.in_chans`) and the newer writers' one (text fields nested under `text_config`,
`rope_parameters`, `in_channels`). `ModelConfig.from_hf` reads both; `to_hf` writes the flat layout, which real
checkpoints use and every transformers version loads. Fields that decide tensor shapes must be present; the
others fall back to the reference implementation's defaults, so a config.json means the same model here and
there. Presets: "toy" and "small" for experiments on a CPU, "qwen2.5-vl-3b" / "qwen2.5-vl-7b" (real shapes).
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field

TOKEN_ID_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")

@dataclass
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 2048          # = the decoder width: the merger projects into it
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2         # a still image is repeated to fill the 2 frames of a patch
    spatial_merge_size: int = 2          # 2x2 patches -> one decoder token
    window_size: int = 112               # px per attention window side (112 = 8x8 patches = 4x4 merged tokens)
    fullatt_block_indexes: tuple = (7, 15, 23, 31)  # blocks that attend over the whole frame
    tokens_per_second: float = 2         # temporal M-RoPE ids per second of video


@dataclass
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple = (16, 24, 24)  # rotary pairs fed by (temporal, height, width) ids; sums to head_dim/2
    max_position_embeddings: int = 128000  # recorded for the hub; nothing here depends on it

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tie_word_embeddings: bool = True     # lm_head shares embed_tokens (3B); no lm_head.weight in the checkpoint
    image_token_id: int = 151655         # <|image_pad|>
    video_token_id: int = 151656         # <|video_pad|>
    vision_start_token_id: int = 151652  # <|vision_start|>
    vision_end_token_id: int = 151653    # <|vision_end|>

    def __post_init__(self):
        v, t = self.vision, self.text
        v.fullatt_block_indexes = tuple(v.fullatt_block_indexes)
        t.mrope_section = tuple(t.mrope_section)
        problems = []
        if t.hidden_size % t.num_attention_heads:
            problems.append(f"text hidden_size {t.hidden_size} is not a multiple of num_attention_heads "
                            f"{t.num_attention_heads}")
        elif 2 * sum(t.mrope_section) != t.head_dim:
            problems.append(f"mrope_section {list(t.mrope_section)} sums to {sum(t.mrope_section)} but must sum to "
                            f"head_dim / 2 = {t.head_dim // 2}")
        if t.num_attention_heads % t.num_key_value_heads:
            problems.append(f"num_attention_heads {t.num_attention_heads} is not a multiple of num_key_value_heads "
                            f"{t.num_key_value_heads}")
        if v.hidden_size % v.num_heads or (v.hidden_size // v.num_heads) % 4:
            problems.append(f"vision hidden_size {v.hidden_size} / num_heads {v.num_heads} must be a whole head "
                            "width divisible by 4 (2D rotary)")
        if v.out_hidden_size != t.hidden_size:
            problems.append(f"vision out_hidden_size {v.out_hidden_size} differs from the text hidden_size "
                            f"{t.hidden_size} the merger feeds")
        if any(not 0 <= i < v.depth for i in v.fullatt_block_indexes):
            problems.append(f"fullatt_block_indexes {list(v.fullatt_block_indexes)} name blocks outside 0..{v.depth - 1}")
        ids = {k: getattr(self, k) for k in TOKEN_ID_FIELDS}
        if any(not 0 <= i < t.vocab_size for i in ids.values()) or len(set(ids.values())) < 4:
            problems.append(", ".join(f"{k}={i}" for k, i in ids.items()) + " must be distinct and below "
                            f"vocab_size {t.vocab_size}")
        if problems:
            raise ValueError("Inconsistent model config: " + "; ".join(problems) + ".")

    # ------------------------------------------------------------------------------------------------- hub I/O
    @classmethod
    def from_hf(cls, d):
        """Read a Qwen2.5-VL config.json dict in either layout (see module docstring)."""
        if d.get("model_type") != "qwen2_5_vl":
            raise ValueError(f"config.json has model_type {d.get('model_type')!r}; mmduet2 supports only "
                             "'qwen2_5_vl' (Qwen2.5-VL checkpoints).")
        nested = d.get("text_config") or {}
        text = {}
        keys = {f.name for f in dataclasses.fields(TextConfig)} | {"head_dim", "hidden_act", "use_sliding_window"}
        for k in keys & (set(d) | set(nested)):
            if k in d and k in nested and d[k] != nested[k]:
                raise ValueError(f"config.json gives {k} twice with different values ({d[k]!r} at the top level, "
                                 f"{nested[k]!r} under text_config); keep one.")
            text[k] = nested.get(k, d.get(k))
        # Rope settings may sit in rope_scaling or rope_parameters, at the top level, under text_config, or both.
        ropes = [r for src in (d, nested) for r in (src.get("rope_scaling"), src.get("rope_parameters")) if r]
        for r in ropes:
            if r.get("rope_type", r.get("type", "default")) not in ("default", "mrope"):
                raise ValueError(f"config.json asks for rope type {r.get('rope_type', r.get('type'))!r}; only "
                                 "Qwen2.5-VL's plain M-RoPE is supported.")
        for k in ("mrope_section", "rope_theta"):
            seen = [r[k] for r in ropes if k in r] + ([text[k]] if k in text else [])
            if any(json.dumps(v) != json.dumps(seen[0]) for v in seen):
                raise ValueError(f"config.json gives {k} as {' and '.join(map(repr, seen))}; keep one.")
            if seen:
                text[k] = seen[0]
        text.setdefault("rope_theta", 1e6)
        if text.get("use_sliding_window"):
            raise ValueError("config.json sets use_sliding_window=true, which Qwen2.5-VL checkpoints never use and "
                             "mmduet2 does not implement; set it to false.")
        vis = dict(d.get("vision_config") or {})
        if "in_chans" in vis and vis.setdefault("in_channels", vis["in_chans"]) != vis["in_chans"]:
            raise ValueError(f"vision_config gives in_chans {vis['in_chans']} and in_channels {vis['in_channels']}; "
                             "keep one.")
        for name, sub in (("text", text), ("vision", vis)):
            if sub.get("hidden_act", "silu") != "silu":
                raise ValueError(f"config.json {name} hidden_act is {sub['hidden_act']!r}; Qwen2.5-VL uses 'silu'.")
        if (vis.get("rope_parameters") or {}).get("rope_theta", 10000.0) != 10000.0:
            raise ValueError("vision_config rope_theta must be 10000 (Qwen2.5-VL's vision rotary).")
        if "head_dim" in text and text["head_dim"] * text.get("num_attention_heads", 0) != text.get("hidden_size"):
            raise ValueError(f"config.json head_dim {text['head_dim']} is not hidden_size / num_attention_heads.")
        missing = [f"{k} (text)" for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "mrope_section") if k not in text]
        missing += [f"vision_config.{k}" for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                                   "out_hidden_size") if k not in vis]
        if missing:
            raise ValueError("config.json is missing " + ", ".join(missing) + " (text fields are read from the top "
                             "level or text_config, mrope_section from rope_scaling or rope_parameters).")
        # Everything not shape-defining defaults as in transformers' Qwen2_5_VLConfig, so both read it alike.
        text["num_key_value_heads"] = text.get("num_key_value_heads") or text["num_attention_heads"]
        text.setdefault("rms_norm_eps", 1e-5)
        vis = {"tokens_per_second": 4, "window_size": 112, "fullatt_block_indexes": (7, 15, 23, 31), **vis}
        tie = d.get("tie_word_embeddings", False) or nested.get("tie_word_embeddings", False)
        top = {k: d.get(k, getattr(cls, k)) for k in TOKEN_ID_FIELDS}
        pick = lambda klass, src: {f.name: src[f.name] for f in dataclasses.fields(klass) if f.name in src}
        return cls(vision=VisionConfig(**pick(VisionConfig, vis)), text=TextConfig(**pick(TextConfig, text)),
                   tie_word_embeddings=bool(tie), **top)

    def to_hf(self, dtype="float32"):
        """The flat hub layout of the released Qwen2.5-VL checkpoints (what `from_hf` and transformers read)."""
        t, v = dataclasses.asdict(self.text), dataclasses.asdict(self.vision)
        mrope = list(t.pop("mrope_section"))
        v["fullatt_block_indexes"] = list(v["fullatt_block_indexes"])
        return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
                **t, "hidden_act": "silu", "use_sliding_window": False,
                "rope_scaling": {"type": "mrope", "mrope_section": mrope},
                "tie_word_embeddings": self.tie_word_embeddings,
                **{k: getattr(self, k) for k in TOKEN_ID_FIELDS}, "torch_dtype": dtype,
                "vision_config": {**v, "hidden_act": "silu"}}


def load_config(path):
    """ModelConfig from a checkpoint directory's config.json (or the file itself)."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: a checkpoint directory needs the config.json it was saved with.")
    try:
        with open(file) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); re-save the checkpoint.") from None
    return ModelConfig.from_hf(d)


# ----------------------------------------------------------------------------------------------------- presets
# The toy tokenizer decides its special-token ids and vocab_size; scripts pass them as overrides.
_TOY_IDS = dict(vision_start_token_id=500, vision_end_token_id=501, image_token_id=502, video_token_id=503)
PRESETS = {
    "toy": lambda: ModelConfig(
        VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                     fullatt_block_indexes=(1,), window_size=112),
        TextConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, mrope_section=(4, 6, 6),
                   max_position_embeddings=32768), tie_word_embeddings=True, **_TOY_IDS),
    "small": lambda: ModelConfig(
        VisionConfig(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512,
                     fullatt_block_indexes=(3,), window_size=112),
        TextConfig(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12),
                   max_position_embeddings=32768), tie_word_embeddings=True, **_TOY_IDS),
    "qwen2.5-vl-3b": lambda: ModelConfig(),
    "qwen2.5-vl-7b": lambda: ModelConfig(
        VisionConfig(out_hidden_size=3584),
        TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                   num_attention_heads=28, num_key_value_heads=4), tie_word_embeddings=False),
}


def preset(name, **overrides):
    """A named config with overrides. A key names a ModelConfig field (image_token_id, ...), else a field of
    TextConfig or VisionConfig; prefix it with `text_` / `vision_` where both have it (hidden_size, ...)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    cfg = PRESETS[name]()
    top, sub = {}, {"text": {}, "vision": {}}
    names = {part: {f.name for f in dataclasses.fields(getattr(cfg, part))} for part in sub}
    for key, val in overrides.items():
        part = next((p for p in sub if key.startswith(p + "_") and key[len(p) + 1:] in names[p]), None)
        if part:
            sub[part][key[len(part) + 1:]] = val
        elif key in {f.name for f in dataclasses.fields(cfg)} - set(sub):
            top[key] = val
        else:
            owners = [p for p in sub if key in names[p]]
            if len(owners) != 1:
                hint = (f"say text_{key} or vision_{key}" if owners else
                        "see the fields of ModelConfig, TextConfig and VisionConfig")
                raise ValueError(f"preset override {key!r} is {'ambiguous' if owners else 'unknown'}: {hint}.")
            sub[owners[0]][key] = val
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, **sub["text"]),
                               vision=dataclasses.replace(cfg.vision, **sub["vision"]), **top)
