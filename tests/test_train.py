"""Training end to end on tiny settings: SFT lowers the loss, resume is exact, and the whole toy chain
(data -> SFT -> RL -> eval) runs through the same command lines the README gives."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmduet2.checkpoint import check_resume
from mmduet2.config import preset
from mmduet2.model import MMDuet2
from mmduet2.rewards import RewardConfig
from mmduet2.tokenizer import Tokenizer, train_toy_tokenizer
from mmduet2.training import Split, collate, loss_positions, model_inputs, parse_config
import shapewatch
from shapewatch import ensure_toy_data, write_video
from train_sft import sft_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SFT = ["--steps", "4", "--batch-size", "2", "--eval-every", "2", "--save-every", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_toy_data(str(tmp_path_factory.mktemp("toy") / "data"), train=6, val=4, test=4, log=None)


def run(script, *args, ok=True):
    """The script's stdout; with ok=False it must fail, and its stderr is returned."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout if ok else proc.stderr


def test_caption_and_presence_samples(data):
    """The base model's two kinds of dialogue: caption QA under Qwen's default system prompt, and the proactive
    layout with every turn's reply given by `replies` (the presence dialogues), trained on every turn."""
    split = Split(os.path.join(data, "train.jsonl"))
    tok = Tokenizer.from_dir(os.path.join(ROOT, "assets", "toy_base"))
    cap = tok.decode(split.sample(0, tok, caption=True)["input_ids"])
    assert "What shapes are on screen now?" in cap and "continuously incoming video frames" not in cap
    presence = [[shapewatch.presence(r, t.time, "NO REPLY") for t in split.turns(i)] for i, r in enumerate(split.records)]
    i = next(i for i, p in enumerate(presence) if len(set(p)) > 1)          # a video showing something asked for
    dense = split.sample(i, tok, replies=lambda rec, t: shapewatch.presence(rec, t, "NO REPLY"))
    assert "continuously incoming video frames" in tok.decode(dense["input_ids"])   # the proactive system prompt
    trained = [int(k) for k, m in zip(dense["input_ids"], dense["loss_mask"]) if m]
    assert trained == [k for r in presence[i] for k in tok.encode(r) + [tok.im_end_id]]


def test_one_sft_step_lowers_the_loss(data):
    torch.manual_seed(0)
    split = Split(os.path.join(data, "train.jsonl"))
    tok = train_toy_tokenizer([r["questions"][0]["text"] for r in split.records] + ["NO REPLY"], vocab_size=300)
    model = MMDuet2(preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id,
                           video_token_id=tok.video_pad_id, vision_start_token_id=tok.vision_start_id,
                           vision_end_token_id=tok.vision_end_id))
    batch = collate([split.sample(i, tok) for i in range(2)])
    inputs = model_inputs(batch, "cpu", torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = sft_loss(model(**inputs), batch)
    # logits only where the loss is taken give the same loss (what the training scripts compute)
    positions = loss_positions(batch["loss_mask"])
    assert len(positions) < batch["input_ids"].shape[1] / 2
    part = model(**inputs, logits_to_keep=positions)
    torch.testing.assert_close(part, model(**inputs)[:, positions])
    torch.testing.assert_close(sft_loss(part, batch, positions), before)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = sft_loss(model(**inputs), batch)
    assert after < before


def test_sft_resume_is_exact(data, tmp_path):
    straight, resumed = tmp_path / "a" / "sft", tmp_path / "b" / "sft"
    run("train_sft.py", "--data", data, "--out", str(straight), *TINY_SFT)
    run("train_sft.py", "--data", data, "--out", str(resumed), *TINY_SFT[:-2], "--warmup", "1", "--steps", "2")
    run("train_sft.py", "--data", data, "--out", str(resumed), *TINY_SFT, "--resume")
    logs = [[json.loads(line) for line in open(p.parent / "sft_log.jsonl")] for p in (straight, resumed)]
    a = {e["step"]: e["loss"] for e in logs[0]}
    b = {e["step"]: e["loss"] for e in logs[1]}
    assert set(a) == set(b) == {1, 2, 3, 4}
    for step in (3, 4):  # the steps after the resume
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


def test_split_lists_every_unusable_video_at_load(tmp_path):
    """A video shorter than its record's duration used to crash training with an IndexError much later."""
    frames = [np.full((28, 28, 3), 30 * j, np.uint8) for j in range(8)]
    write_video(str(tmp_path / "ok.mp4"), frames, fps=2)            # 4 s
    write_video(str(tmp_path / "short.mp4"), frames[:4], fps=2)     # 2 s
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500)
    recs = [{"id": name, "video": f"{video}.mp4", "duration": 4.0, "kind": "1qna",
             "questions": [{"time": 0, "text": "Q?"}], "answers": []}
            for name, video in (("a", "ok"), ("b", "short"), ("c", "broken"), ("d", "ok"))]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ValueError, match=r"train.jsonl: 2 of 4 records cannot be trained on") as err:
        Split(str(path))
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 2 and "record b: " in lines[0] and "short.mp4 is 2.00 s long but 4.00 s are needed" in lines[0]
    assert "record c: " in lines[1] and "broken.mp4 could not be decoded" in lines[1]
    path.write_text("".join(json.dumps({**r, "duration": 2.0}) + "\n" for r in recs[:2]))
    assert len(Split(str(path))) == 2                                # 2 s is all these records need now
    with pytest.raises(ValueError, match="--frames-per-turn 0 must be at least 1"):
        Split(str(path), frames_per_turn=0)


def test_sft_resume_checks_the_config(data, tmp_path):
    out = tmp_path / "sft"
    one_step = ["--data", data, "--out", str(out), "--init", "", "--steps", "1", "--batch-size", "1",
                "--eval-every", "1", "--save-every", "1", "--warmup", "1"]
    run("train_sft.py", *one_step)
    err = run("train_sft.py", *one_step, "--preset", "small", "--resume", ok=False)
    assert f"{out} was trained with --preset 'toy' (now 'small'): resume with the same flags" in err
    assert "Traceback" not in err
    saved = json.load(open(out / "train_config.json"))
    Cfg = dataclasses.make_dataclass("Cfg", list(saved))
    check_resume(str(out), Cfg(**{**saved, "data": data + "/"}), ("preset", "data"))   # the same folder
    with pytest.raises(SystemExit, match=r"--data .* \(now 'other'\), --frame-interval 2.0 \(now 1.0\)"):
        check_resume(str(out), Cfg(**{**saved, "data": "other", "frame_interval": 1.0}),
                     ("preset", "data", "frame_interval"))


def test_rl_flags_hold_every_reward_field():
    """Each RewardConfig field is a train_rl.py flag (--w-rep 0 is the paper's ablation) that lands in cfg.reward."""
    from train_rl import RLConfig
    cfg, resume = parse_config(RLConfig, "", ["--w-rep", "0", "--no-recount-repeats", "--out-mode", "replies",
                                              "--resume"])
    assert cfg.reward == RewardConfig(w_rep=0.0, recount_repeats=False, out_mode="replies") and resume
    assert parse_config(RLConfig, "", []) == (RLConfig(), False)


def test_toy_chain_smoke(data, tmp_path):
    sft, rl, out = tmp_path / "sft", tmp_path / "rl", tmp_path / "eval"
    run("train_sft.py", "--data", data, "--out", str(sft), *TINY_SFT)
    log = run("train_rl.py", "--data", data, "--sft", str(sft), "--out", str(rl), "--steps", "2",
              "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "2", "--eval-examples", "2",
              "--max-new-tokens", "6", "--sample-every", "1")
    assert "step 2" in log and "val_pauc" in log
    assert (rl / "config.json").exists() and (rl / "tokenizer.json").exists() and (tmp_path / "rl_curves.png").exists()
    assert (tmp_path / "rl_last" / "trainer_state.pt").exists()
    entries = [json.loads(line) for line in open(tmp_path / "rl_log.jsonl")]
    assert {"reward", "r_pauc", "r_rep", "r_out", "r_pfx", "reply_rate", "grad_norm"} <= set(entries[-1])
    table = run("eval.py", "--checkpoint", f"sft={sft}", "--checkpoint", f"rl={rl}", "--gold",
                os.path.join(data, "test_proactive.json"), "--video-root", data, "--out", str(out),
                "--max-new-tokens", "6", "--timelines", "1")
    assert "sft" in table and "rl" in table
    for name in ("sft", "rl"):
        metrics = json.load(open(out / name / "metrics.json"))
        assert 0 <= metrics["pauc"] <= 100 and metrics["n"] == 2
        assert len(open(out / name / "predictions.jsonl").readlines()) == 2
    # an interrupted run resumes: only the missing example is predicted again, the kept line is untouched
    pred = out / "rl" / "predictions.jsonl"
    first, second = open(pred).readlines()
    pred.write_text(first)
    run("eval.py", "--checkpoint", str(rl), "--gold", os.path.join(data, "test_proactive.json"),
        "--video-root", data, "--out", str(out), "--max-new-tokens", "6", "--timelines", "0")
    lines = open(pred).readlines()
    assert lines[0] == first and len(lines) == 2 and json.loads(lines[1]) == json.loads(second)


@pytest.mark.parametrize("extra", [[], ["--lora-rank", "4", "--lr", "1e-2"], ["--kl-coef", "0.5", "--lr", "1e-2"],
                                   ["--centre-decisions"]], ids=["full", "lora", "kl", "centred"])
def test_rl_resume_is_exact(data, tmp_path, extra):
    """Two RL steps straight, or one step then --resume for the second: same rollouts, same weights. With LoRA
    the adapters come back from trainer_state.pt; with the KL term the reference stays the SFT model."""
    sft = tmp_path / "sft"
    run("train_sft.py", "--data", data, "--out", str(sft), *TINY_SFT)
    common = ["--data", data, "--sft", str(sft), "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "1",
              "--eval-examples", "2", "--max-new-tokens", "6", "--save-every", "1", *extra]
    straight, resumed = tmp_path / "a" / "rl", tmp_path / "b" / "rl"
    run("train_rl.py", *common, "--out", str(straight), "--steps", "2")
    run("train_rl.py", *common, "--out", str(resumed), "--steps", "1")
    run("train_rl.py", *common, "--out", str(resumed), "--steps", "2", "--resume")
    logs = [{e["step"]: e for e in map(json.loads, open(p.parent / "rl_log.jsonl"))} for p in (straight, resumed)]
    assert set(logs[0]) == set(logs[1]) == {1, 2}
    assert logs[0][2]["reward"] == logs[1][2]["reward"] and logs[0][2]["r_pauc"] == logs[1][2]["r_pauc"]
    a, b = (MMDuet2.from_pretrained(str(p.parent / "rl_last")).state_dict() for p in (straight, resumed))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert logs[0][2]["loss"] == logs[1][2]["loss"] and logs[0][2]["grad_norm"] == logs[1][2]["grad_norm"]


def torchrun(script, *args, n=2):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           os.path.join(ROOT, script), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_data_parallel_sft_equals_gradient_accumulation(data, tmp_path):
    """torchrun with 2 processes of batch 1 averages the same two batches as one process accumulating 2."""
    common = ["--data", data, "--batch-size", "1", "--steps", "2", "--warmup", "1", "--eval-every", "2",
              "--save-every", "2", "--device", "cpu"]
    log = torchrun("train_sft.py", *common, "--out", str(tmp_path / "ddp" / "sft"))
    assert "data parallel over 2 processes" in log
    run("train_sft.py", *common, "--grad-accum", "2", "--out", str(tmp_path / "one" / "sft"))
    run("train_sft.py", *common, "--out", str(tmp_path / "half" / "sft"))  # one batch a step: other weights
    a, b, c = (MMDuet2.from_pretrained(str(tmp_path / d / "sft")).state_dict() for d in ("ddp", "one", "half"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)
    assert len(open(tmp_path / "ddp" / "sft_log.jsonl").readlines()) == 2


def test_data_parallel_rl_runs(data, tmp_path):
    sft = tmp_path / "sft"
    run("train_sft.py", "--data", data, "--out", str(sft), *TINY_SFT)
    log = torchrun("train_rl.py", "--data", data, "--sft", str(sft), "--out", str(tmp_path / "rl"), "--steps", "2",
                   "--prompts-per-step", "1", "--group-size", "2", "--eval-every", "2", "--eval-examples", "2",
                   "--max-new-tokens", "6", "--device", "cpu")
    assert log.count("step 2 ") == 1  # process 0 alone logs
    assert (tmp_path / "rl_last" / "trainer_state.pt").exists()
    assert len(open(tmp_path / "rl_log.jsonl").readlines()) == 2


def test_rl_with_lora_changes_only_the_targets(data, tmp_path):
    """RL with --lora-rank saves a plain hub checkpoint (adapters merged) that differs from the SFT model only
    in the targeted projections."""
    sft = tmp_path / "sft"
    run("train_sft.py", "--data", data, "--out", str(sft), *TINY_SFT)
    run("train_rl.py", "--data", data, "--sft", str(sft), "--out", str(tmp_path / "rl"), "--steps", "2",
        "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "5", "--eval-examples", "2",
        "--max-new-tokens", "6", "--lora-rank", "4", "--lora-targets", "q_proj,v_proj", "--lr", "1e-2")
    before = MMDuet2.from_pretrained(str(sft)).state_dict()
    after = MMDuet2.from_pretrained(str(tmp_path / "rl_last")).state_dict()
    assert set(before) == set(after)  # no lora_A / lora_B keys: merged on save
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), sorted(changed)


def test_toy_base_command_at_tiny_size(data, tmp_path):
    """The command that made assets/toy_base (README), at tiny size: a model from scratch on captions and
    presence dialogues only, which the default SFT then starts from, vision frozen."""
    base, sft = tmp_path / "base", tmp_path / "sft"
    run("train_sft.py", "--data", data, "--out", str(base), "--init", "", "--no-freeze-vision", "--caption-mix", "0.5",
        "--dense-mix", "0.5", *TINY_SFT)
    made = json.load(open(base / "train_config.json"))
    assert (made["caption_mix"], made["dense_mix"], made["freeze_vision"]) == (0.5, 0.5, False)
    err = run("train_sft.py", "--data", data, "--out", str(tmp_path / "bad"), "--caption-mix", "0.5", "--dense-mix",
              "0.6", *TINY_SFT, ok=False)
    assert "are shares of each batch: each at least 0, together at most 1." in err and "Traceback" not in err
    run("train_sft.py", "--data", data, "--out", str(sft), "--init", str(base), *TINY_SFT)
    a, b = (MMDuet2.from_pretrained(str(p)).state_dict() for p in (base, sft))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("visual."))         # frozen vision
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("model.layers."))


def test_seeds_benchmark_at_tiny_size(data, tmp_path):
    """bench.seeds runs the chain per seed, prints each seed and mean +- std, and reuses finished stages."""
    tiny_rl = (f"--data {data} --steps 1 --prompts-per-step 2 --group-size 2 --eval-every 1 --eval-examples 2 "
               "--max-new-tokens 4")
    args = ["-m", "bench.seeds", "--seeds", "0", "1", "--out", str(tmp_path / "seeds"),
            "--sft-args", f"--data {data} " + " ".join(TINY_SFT), "--rl-args", tiny_rl,
            "--gold", os.path.join(data, "test_proactive.json"), "--video-root", data, "--eval-args", "--max-new-tokens 4"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "seed 0" in out.stdout and "seed 1" in out.stdout and "mean +- std" in out.stdout
    assert "RL - SFT PAUC" in out.stdout and "duplicates pooled over the seeds" in out.stdout
    assert "SFT probe shape / colour" in out.stdout
    for seed in (0, 1):
        m = json.load(open(tmp_path / "seeds" / f"s{seed}" / "eval" / "rl" / "metrics.json"))
        assert m["n"] == 2 and 0 <= m["pauc"] <= 100
    done = tmp_path / "seeds" / "s0" / "sft.done"
    stamp = done.stat().st_mtime
    again = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and done.stat().st_mtime == stamp            # nothing was trained again
