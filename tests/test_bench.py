"""The benchmarks that CI cannot run at full size run here on toy shapes, through the same code path: the preset
round trip (random bf16 weights, sharded save, load, every tensor equal, one streamed turn) and the one-shot GPU
check on the CPU (its table's rows carry numbers, and its JSON the same figures), and the bounded cache's bench."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"\d+(\.\d+)?"


def run(module, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def row(out, label):
    """The cells of the table row that starts with `label`."""
    line = next((l for l in out.splitlines() if l.startswith(label)), None)
    assert line is not None, f"no row {label!r} in:\n{out}"
    return line[len(label):].split()


def test_presets_roundtrip_tiny():
    out = run("bench.presets_roundtrip", "--tiny", "--threads", "1")
    assert re.search(r"\n3 weight file\(s\) under .*; 80 tensors equal after the round trip; the turn held \d+ tokens "
                     r"\(128 visual\)", out), out
    for label in ("random bf16 weights", "save_pretrained", "from_pretrained", "compare every tensor",
                  "stream one turn (4 tokens)"):
        cells = row(out, label)
        assert len(cells) == 2 and all(re.fullmatch(NUMBER, c) for c in cells), cells


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = run("bench.gpu_check", "--tiny", "--device", "cpu", "--out", str(tmp_path / "check.json"))
    figures = json.loads((tmp_path / "check.json").read_text())
    rows = {r["row"]: r for r in figures["rows"]}
    for label in ("stream mmduet2", "stream transformers"):
        cells = row(out, label)
        assert [c == "-" for c in cells] == [False] * 4 + [True] * 2 + [False, True, True], cells
        assert cells[0] == "6" and f"{rows[label]['p50_ms']:.1f}" == cells[1]
        assert 0 < rows[label]["p50_ms"] <= rows[label]["p95_ms"] and rows[label]["frames_per_s"] > 0
    cells = row(out, "LoRA RL update")
    assert [c == "-" for c in cells] == [True] * 4 + [False] * 3 + [True, True], cells
    update = rows["LoRA RL update"]
    assert update["tokens"] > 6 * 128 and update["sampled"] > 6 and update["step_s"] > 0 and update["peak_gb"] > 0
    assert re.search(r"the same greedy tokens as mmduet2 on \d of 6 turns", out), out  # bf16 may differ at a tie


def test_gpu_check_chain_tiny_on_cpu(tmp_path):
    """--chain runs train_sft.py, train_rl.py and eval.py as a newcomer would (here tiny, on the CPU): a wall time
    per stage in the table and the JSON, and eval's own table with both models."""
    out = run("bench.gpu_check", "--chain", "--tiny", "--device", "cpu", "--out", str(tmp_path / "chain.json"))
    figures = json.loads((tmp_path / "chain.json").read_text())
    assert [r["row"] for r in figures["rows"]] == ["toy sft", "toy rl", "toy eval"] and figures["chain"] == "tiny"
    for r in figures["rows"]:
        cells = row(out, r["row"])
        assert cells == ["-"] * 7 + [f"{r['wall_s']:.0f}", "-"] and r["wall_s"] > 0, cells
    assert re.search(r"^sft\s", figures["eval_table"], re.M) and re.search(r"^rl\s", figures["eval_table"], re.M), out


def test_probe_question_counts_every_appearance(tmp_path):
    """bench.probe_question on a random toy model: probabilities, and one figure per appearance of an object in the
    one-question records (each object matches exactly two of the toy's seven questions: its colour and its shape)."""
    from bench.probe_question import TARGETS, question_gap
    from mmduet2.stream import random_toy_model
    from shapewatch import ensure_toy_data, question_text
    from mmduet2.training import Split
    data = ensure_toy_data(str(tmp_path / "data"), train=0, val=4, test=0, log=None)
    split = Split(os.path.join(data, "val.jsonl"), frame_interval=2.0)
    model, tok = random_toy_model(" ".join(question_text(t) for t in TARGETS))
    gap = question_gap(model, tok, split, n=4)
    one_question = [(r, split.turns(i)) for i, r in enumerate(split.records) if len(r["questions"]) == 1]
    expected = sum(1 for r, turns in one_question for k, t in enumerate(turns) for o in r["objects"]
                   if (turns[k - 1].time if k else 0.0) < o["start"] <= t.time)
    assert expected > 0 and gap["turns"] == expected
    assert 0.0 <= gap["match"] <= 1.0 and 0.0 <= gap["other"] <= 1.0


def test_bench_bounded_tiny():
    """60 turns with a 4 s window: the bounded cache's slots stop growing, the full cache's do not."""
    out = run("bench.bench_bounded", "--turns", "60", "--early", "20", "--window", "4", "--text-budget", "40")
    (full_early, full_end), (bounded_early, bounded_end) = [[int(c) for c in row(out, f"{m:>8}")[:2]]
                                                            for m in ("full", "bounded")]
    assert bounded_early == bounded_end < full_early < full_end


def test_credit_classes_turns_against_the_gold_spans():
    """bench.credit's turn classes on a hand-made trajectory: each class once, and a reply is first in its span
    only until the trajectory has answered that span."""
    from bench.credit import CLASSES, turn_classes
    from shapewatch import RuleJudge
    q = "Tell me every time a red shape appears."
    answers = [{"reply_timespan": [4, 9], "content": "A red circle appeared.", "question": q},
               {"reply_timespan": [20, 21], "content": "A red square appeared.", "question": q},
               {"reply_timespan": [28, 29], "content": "A red square appeared.", "question": q}]
    turns = [(4, "A red circle appeared."), (8, "A red circle appeared."), (12, "A blue square appeared."),
             (16, "NO REPLY"), (20, "NO REPLY"), (24, "NO REPLY"), (28, "A red triangle appeared.")]
    kinds = turn_classes(turns, answers, RuleJudge(max_score=4, precision=True), 4)
    assert kinds == ["reply, first in span, right", "reply again in span", "reply outside every span",
                     "silent elsewhere", "silent, span due", "silent elsewhere", "reply, first in span, wrong"]
    assert set(kinds) == set(CLASSES)
    overlapping = [{"reply_timespan": [4, 9], "content": "A red circle appeared.", "question": q},
                   {"reply_timespan": [6, 13], "content": "A red square appeared.", "question": q}]
    kinds = turn_classes([(8, "A red square appeared."), (12, "A red square appeared.")], overlapping,
                         RuleJudge(max_score=4, precision=True), 4)
    assert kinds == ["reply, first in span, right", "reply again in span"]  # the second open span's object


def test_credit_on_a_random_model_sums_to_zero(tmp_path):
    """bench.credit plays real rollouts (a random toy model): every rollout counted, every played turn classed,
    and the advantages of reply and silent turns cancel (a group's rollouts play the same turns)."""
    import train_rl
    from bench.credit import credit
    from mmduet2.stream import random_toy_model
    from mmduet2.training import Split
    from shapewatch import ensure_toy_data
    data = ensure_toy_data(str(tmp_path / "data"), train=3, val=0, test=0, log=None)
    cfg = train_rl.RLConfig(data=data, prompts_per_step=2, group_size=3, max_new_tokens=4)
    split = Split(os.path.join(data, "train.jsonl"), cfg.frames_per_turn, cfg.frame_interval)
    model, tok = random_toy_model("A red circle appeared. Nothing yet. Tell me every time a red shape appears.")
    table, by_replies = credit(model, tok, split, cfg, train_rl.make_judges(cfg), steps=2)
    assert sum(map(len, by_replies.values())) == 2 * 2 * 3
    assert sum(n for n, _ in table.values()) >= 2 * 2 * 3 * 5    # episodes of 20-32 s: 5-8 turns of 4 s
    assert abs(sum(s for _, s in table.values())) < 1e-4


def test_gold_reward_charges_the_second_appearance_and_keep_drops_it(tmp_path):
    """bench.gold_reward: a dialogue whose gold says the same words for two appearances is charged by r_rep (the
    paper's exact-repeat rule), one whose answers differ is not; --keep writes a copy without the first, leaves the
    source as it was, and refuses to write into it."""
    from bench.gold_reward import exact_repeats, gold_turns, replay
    q = {"time": 0.0, "text": "Tell me every time a red shape appears."}
    same = {"id": "same", "duration": 12.0, "questions": [q], "answers": [
        {"question": 0, "content": "Red circle appeared.", "reply_timespan": [1, 5]},
        {"question": 0, "content": "Red circle appeared.", "reply_timespan": [7, 11]}]}
    second = dict(same["answers"][1], content="Red square appeared.")
    other = dict(same, id="other", answers=[same["answers"][0], second])
    assert gold_turns(same) == [(4.0, "Red circle appeared."), (8.0, "Red circle appeared."), (12.0, "NO REPLY")]
    assert exact_repeats(same) == ["Red circle appeared."] and exact_repeats(other) == []
    assert replay(same)[1]["r_rep"] == -0.5 and replay(other)[1]["r_rep"] == 0.0
    assert replay(other)[1]["r_out"] == 0.0 and replay(other)[1]["r_pfx"] == 0.0
    data = tmp_path / "toy"
    (data / "videos").mkdir(parents=True)
    train = "".join(json.dumps(r) + "\n" for r in (same, other))
    (data / "train.jsonl").write_text(train)
    (data / "val_proactive.json").write_text("[]")
    (data / "meta.json").write_text(json.dumps({"version": 7, "sizes": {"train": 2}, "stats": {}}))
    out = run("bench.gold_reward", "--data", str(data), "--keep", str(tmp_path / "kept"))
    assert "r_rep: mean -0.250, below 0 on 1 of 2" in out
    assert "word for word: 1 of 4, in 1 of 2 dialogues (1 naming an object, 0 none)" in out
    kept = [json.loads(line)["id"] for line in open(tmp_path / "kept" / "train.jsonl")]
    assert kept == ["other"] and (tmp_path / "kept" / "val_proactive.json").read_text() == "[]"
    assert os.path.samefile(tmp_path / "kept" / "videos", data / "videos")
    meta = json.loads((tmp_path / "kept" / "meta.json").read_text())
    assert meta["sizes"]["train"] == 1 and "stats" not in meta and "kept_by" in meta
    assert (data / "train.jsonl").read_text() == train
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "bench.gold_reward", "--data", str(data), "--keep", str(data)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "folder of its own" in proc.stderr
    assert (data / "train.jsonl").read_text() == train
