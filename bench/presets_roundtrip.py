"""A real-size preset through the hub layout on the CPU: random bf16 weights, a sharded save_pretrained,
from_pretrained back, every tensor compared, then one turn streamed through the Streamer (one 224x448 frame = 128
visual tokens, a question, a few decoded tokens). Prints each phase's seconds and the peak resident memory so far.

    python -m bench.presets_roundtrip [--preset qwen2.5-vl-3b] [--max-shard-mb 2000] [--tokenizer DIR] [--out DIR]
    python -m bench.presets_roundtrip --tiny     # the same code path on the toy config (tests/test_bench.py)

Not for CI at full size: the model and its reloaded copy are held together for the comparison, so the peak is about
twice the weights (qwen2.5-vl-3b: 7.5 GB of bf16 weights, 15.8 GB peak RSS measured, docs/scaling.md; 7B ~35 GB).
Without --tokenizer (a folder with a Qwen2.5-VL tokenizer.json, e.g. written by make_qwen_tokenizer.py) the turn is
tokenised by a toy tokenizer whose special-token ids the config adopts; every shape stays the preset's.
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch

from mmduet2.config import preset
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT
from mmduet2.model import MMDuet2
from mmduet2.stream import StreamConfig, Streamer
from mmduet2.tokenizer import Tokenizer, train_toy_tokenizer

QUESTION = "Tell me every time a red shape appears."


def tokenizer_and_config(name, tokenizer_dir=None, tiny=False):
    """The tokenizer in `tokenizer_dir`, or a toy one, and the preset `name` (the toy preset if `tiny`) with that
    tokenizer's special-token ids; a tiny config also takes its vocabulary size, a real one keeps its own."""
    tok = (Tokenizer.from_dir(tokenizer_dir) if tokenizer_dir
           else train_toy_tokenizer([SYSTEM_PROMPT, QUESTION, NO_REPLY], vocab_size=512))
    ids = dict(image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
               vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id)
    return tok, preset("toy" if tiny else name, **ids, **({"vocab_size": tok.vocab_size} if tiny else {}))


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2.5-vl-3b", help="model preset (mmduet2/config.py)")
    p.add_argument("--tiny", action="store_true", help="the toy preset instead, with 1 MB shards (seconds, for CI)")
    p.add_argument("--max-shard-mb", type=float, help="shard size limit in MB (default 2000; with --tiny 1)")
    p.add_argument("--tokenizer", help="folder with a Qwen2.5-VL tokenizer.json (default: a toy tokenizer)")
    p.add_argument("--new-tokens", type=int, default=4, help="tokens decoded in the streamed turn")
    p.add_argument("--out", help="keep the checkpoint in this folder (default: a temporary one, removed)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = "toy" if args.tiny else args.preset
    tok, cfg = tokenizer_and_config(args.preset, args.tokenizer, args.tiny)
    shard_bytes = int((args.max_shard_mb or (1 if args.tiny else 2000)) * 1e6)
    rows = []

    def phase(label, fn):
        t = time.perf_counter()
        out = fn()
        rows.append((label, time.perf_counter() - t, peak_rss_gb()))
        return out

    # ---- random weights, sharded save, load ---------------------------------------------------------------
    torch.manual_seed(0)
    model = phase("random bf16 weights", lambda: MMDuet2.random(cfg, dtype=torch.bfloat16).eval())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params / 1e6:,.1f} M parameters ({n_params * 2 / 1e6:,.0f} MB in bf16), "
          f"tied head {cfg.tie_word_embeddings}, {args.threads} threads")
    tmp = None if args.out else tempfile.TemporaryDirectory()
    path = args.out or tmp.name
    phase("save_pretrained", lambda: model.save_pretrained(path, max_shard_size=shard_bytes))
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    back = phase("from_pretrained", lambda: MMDuet2.from_pretrained(path, dtype=torch.bfloat16).eval())

    # ---- every tensor equal, the index as the hub writes it -----------------------------------------------
    def compare():
        a, b = model._hub_state(), back._hub_state()
        bad = sorted(set(a) ^ set(b)) + [k for k in a if k in b and (a[k].dtype != b[k].dtype
                                                                       or not torch.equal(a[k], b[k]))]
        if (back.lm_head.weight is back.model.embed_tokens.weight) != cfg.tie_word_embeddings:
            bad.append("lm_head.weight (tie)")
        if len(files) > 1:
            with open(os.path.join(path, "model.safetensors.index.json")) as f:
                index = json.load(f)
            if sorted(index["weight_map"]) != sorted(a) or index["metadata"]["total_size"] != sum(
                    v.numel() * v.element_size() for v in a.values()):
                bad.append("model.safetensors.index.json")
        return len(a), bad
    n_tensors, bad = phase("compare every tensor", compare)
    if bad:
        sys.exit(f"the round trip changed {len(bad)} entries: {', '.join(bad[:10])}")
    del model

    # ---- one streamed turn ---------------------------------------------------------------------------------
    frame = np.random.default_rng(0).integers(0, 256, (224, 448, 3), dtype=np.uint8)  # 8x16 merged tokens
    streamer = Streamer(back, tok, StreamConfig(frames_per_turn=1, max_new_tokens=args.new_tokens))
    phase(f"stream one turn ({args.new_tokens} tokens)", lambda: streamer.step([frame], QUESTION))
    visual = sum(1 for t in streamer.rows[0].ids if t == cfg.image_token_id)

    print(f"{len(files)} weight file(s) under {path}; {n_tensors} tensors equal after the round trip; the turn held "
          f"{len(streamer.rows[0].ids)} tokens ({visual} visual)")
    print(f"{'phase':<28}{'seconds':>10}{'peak RSS GB':>14}")
    for label, seconds, rss in rows:
        print(f"{label:<28}{seconds:>10.2f}{rss:>14.2f}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
