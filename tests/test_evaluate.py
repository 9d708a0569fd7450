"""Evaluation: batched streams equal single ones, predictions resume only with their provenance, and every gold
turn is scored (failed videos and empty replies count as silence)."""
import json

import numpy as np
import pytest
import torch

from mmduet2.config import preset
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT, silent
from mmduet2.evaluate import benchmark_frames, predict_records, score, stream_videos, turn_stats
from mmduet2.model import MMDuet2
from mmduet2.stream import StreamConfig, Streamer
from mmduet2.tokenizer import train_toy_tokenizer
from shapewatch import RuleJudge, write_video

Q = ["Tell me every time a red shape appears.", "Tell me every time a circle appears."]


class Chatty(MMDuet2):
    """A random model pushed towards saying "A" (a random one mostly emits whitespace, which decodes to silence)."""
    ids = None

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., self.ids] += 2.0
        return logits


@pytest.fixture(scope="module")
def model_tok():
    tok = train_toy_tokenizer([SYSTEM_PROMPT, *Q, NO_REPLY, "A red circle appeared."], vocab_size=400)
    cfg = preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
                 vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id)
    torch.manual_seed(1)
    Chatty.ids = tok.encode("A")
    return Chatty(cfg).eval(), tok


def test_batched_streams_equal_single_streams(model_tok):
    model, tok = model_tok
    rng = np.random.default_rng(0)
    videos = [([rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(n)], Q[n % 2]) for n in (7, 4, 10)]
    cfg = StreamConfig(frames_per_turn=2, frame_interval=2.0, max_new_tokens=4)
    batched = stream_videos(model, tok, videos, cfg)
    for (frames, q), turns in zip(videos, batched):
        s, alone = Streamer(model, tok, cfg), []
        for k in range(0, len(frames), 2):
            reply = s.step(frames[k:k + 2], q if k == 0 else None)[0]
            alone.append((s.time, None if silent(reply) else reply))
        assert turns == alone
        assert [t for t, _ in turns] == [min(k + 2, len(frames)) * 2.0 for k in range(0, len(frames), 2)]
    assert any(r is not None for turns in batched for _, r in turns)   # the check compares real replies


def records(tmp_path, n=3):
    rng, recs = np.random.default_rng(0), []
    for i in range(n):
        write_video(str(tmp_path / f"v{i}.mp4"), [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)] * 8, 1)
        recs.append({"video": f"v{i}.mp4", "question_id": f"q{i}", "duration": 8.0,
                     "conversation": [{"role": "user", "content": Q[0], "time": 0.0}],
                     "answer": [{"role": "assistant", "content": "A red circle appeared.", "related_timespan": [1, 4],
                                 "reply_timespan": [1, 5]}]})
    return recs


def test_predictions_resume_only_with_their_provenance(model_tok, tmp_path):
    model, tok = model_tok
    recs, path = records(tmp_path), str(tmp_path / "pred.jsonl")
    cfg = StreamConfig(frames_per_turn=2, frame_interval=1.0, max_new_tokens=3)
    preds, failed = predict_records(model, tok, recs, str(tmp_path), cfg, pred_path=path, log=None, batch_size=2,
                                    provenance={"checkpoint_id": "a"})
    assert not failed and sorted(preds) == ["q0", "q1", "q2"] and len(open(path).readlines()) == 3
    # same settings: nothing is streamed again
    again, _ = predict_records(None, None, recs, str(tmp_path), cfg, pred_path=path, log=None,
                               provenance={"checkpoint_id": "a"})
    assert again == preds
    # another checkpoint or another frame interval: refused, naming what differs; --fresh starts over
    with pytest.raises(ValueError, match="checkpoint_id: 'a'.*--fresh"):
        predict_records(model, tok, recs, str(tmp_path), cfg, pred_path=path, log=None,
                        provenance={"checkpoint_id": "b"})
    with pytest.raises(ValueError, match="frame_interval"):
        predict_records(model, tok, recs, str(tmp_path), StreamConfig(2, 2.0, 3), pred_path=path, log=None,
                        provenance={"checkpoint_id": "a"})
    fresh, _ = predict_records(model, tok, recs[:1], str(tmp_path), StreamConfig(2, 2.0, 3), pred_path=path,
                               log=None, provenance={"checkpoint_id": "b"}, fresh=True)
    assert len(open(path).readlines()) == 1 and json.load(open(path + ".meta.json"))["checkpoint_id"] == "b"


def test_benchmark_rounds_stop_after_the_last_span(model_tok, tmp_path):
    """--rounds benchmark: rounds = max(1, min(int(duration * fps), ceil(min(duration, last reply end) * fps)))."""
    rec = lambda duration, ends: {"duration": duration, "answer": [{"reply_timespan": [0, e]} for e in ends]}
    assert benchmark_frames(rec(40, [15, 10]), 2.0) == 8       # ceil(15 / 2): up to 16 s
    assert benchmark_frames(rec(40, [15.5]), 1.0) == 16
    assert benchmark_frames(rec(9.5, [12]), 1.0) == 9           # a span past the end: int(9.5)
    assert benchmark_frames(rec(0.3, [0.1]), 1.0) == 1          # at least one round
    assert benchmark_frames(rec(8, []), 1.0) == 8               # no gold reply: the whole video
    model, tok = model_tok
    recs, path = records(tmp_path, 2), str(tmp_path / "pred.jsonl")
    recs[1]["answer"][0]["reply_timespan"] = [1, 2.5]
    cfg = StreamConfig(frames_per_turn=2, frame_interval=1.0, max_new_tokens=3)
    full, _ = predict_records(model, tok, recs, str(tmp_path), cfg, log=None)
    bench, _ = predict_records(model, tok, recs, str(tmp_path), cfg, pred_path=path, log=None, rounds="benchmark")
    assert full["q0"]["turn_times"] == [2, 4, 6, 8]
    assert bench["q0"]["turn_times"] == [2, 4, 5] and bench["q1"]["turn_times"] == [2, 3]
    for q in ("q0", "q1"):  # nothing changes before the stop
        n = len(bench[q]["turn_times"]) - 1
        assert bench[q]["replies"][:n] == [r for r in full[q]["replies"] if r["time"] <= bench[q]["turn_times"][n - 1]]
    with pytest.raises(ValueError, match="rounds: 'benchmark'"):  # no mixing of the two in one predictions file
        predict_records(model, tok, recs, str(tmp_path), cfg, pred_path=path, log=None)


def test_failed_videos_and_empty_replies_score_as_silence(model_tok, tmp_path):
    model, tok = model_tok
    recs = records(tmp_path, 2)
    recs[1]["video"] = "missing.mp4"
    preds, failed = predict_records(model, tok, recs, str(tmp_path), StreamConfig(2, 1.0, 3), log=None)
    assert [q for q, _ in failed] == ["q1"] and "missing.mp4" in failed[0][1]
    preds["q0"] = {"replies": [{"time": 2.0, "content": ""}, {"time": 4.0, "content": " "}], "turn_times": [2, 4, 6, 8]}
    m = score(recs, preds, RuleJudge(), failed)
    assert m["n"] == 2 and m["failed_videos"] == 1
    assert m["pauc"] == pytest.approx(25.0)              # both gold turns: no reply -> 0.25
    assert m["reply_turns"] == 0 and m["answered_spans"] == 0 and m["median_reply_delay"] is None


def test_turn_stats_by_hand():
    rec = {"question_id": "a", "answer": [{"reply_timespan": [2, 10]}, {"reply_timespan": [12, 13]}]}
    # turns every 2 s; replies at 4 and 6 inside the 5-turn span [2, 10] (turns 2, 4, 6, 8, 10), at 12 in the
    # one-turn span; after the reply at 4 comes a reply (6), after 6 a silent turn (8)
    preds = {"a": {"replies": [{"time": t, "content": "x"} for t in (4, 6, 12)], "turn_times": list(range(2, 16, 2))}}
    stats = turn_stats([rec], preds)
    assert stats == {"second_replies_per_multiturn_span": 1.0, "multiturn_spans": 1, "silent_after_reply": 0.5,
                     "turns_after_reply": 2}
    assert turn_stats([rec], {"a": {"replies": [], "turn_times": None}}) is None


def test_eval_refuses_bad_input_with_one_sentence(tmp_path):
    """Empty gold lists and a zero frame interval exit non-zero naming the problem (no table of dashes, no silent
    fallback to the default interval)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recs = records(tmp_path, 1)
    gold = tmp_path / "gold.json"

    def eval_py(*args):
        return subprocess.run([sys.executable, os.path.join(root, "eval.py"), "--gold", str(gold), "--video-root",
                               str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"), *args],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root), timeout=120)
    gold.write_text(json.dumps([{**recs[0], "answer": []}]))
    run = eval_py("--judge", "rule")
    assert run.returncode != 0 and "holds no gold answers" in run.stderr and "Traceback" not in run.stderr
    gold.write_text(json.dumps(recs))
    run = eval_py("--judge", "rule", "--frame-interval", "0")
    assert run.returncode != 0 and "frame_interval" in run.stderr and "Traceback" not in run.stderr
    gold.unlink()
    run = eval_py()
    assert run.returncode != 0 and "gold.json does not exist" in run.stderr and "Traceback" not in run.stderr


def test_reply_delays_by_hand():
    from mmduet2.evaluate import reply_delays
    turns = [(4, "A red circle."), (6, "NO REPLY"), (8, "Again.")]
    assert reply_delays([[2, 6], [10, 12]], turns) == [2]          # the second span holds no reply
    assert reply_delays([[0, 4], [4, 8]], [(3, " "), *turns]) == [4, 0]  # blank is silence; one reply, two spans


def test_eval_plays_the_benchmarks_rounds_by_default_off_shapewatch(model_tok, tmp_path):
    """eval.py stops a ProactiveVideoQA video after its last gold span unless --rounds full (ShapeWatch records
    default to full, as the toy figures were measured); the choice is in the predictions' provenance."""
    import os
    import subprocess
    import sys
    from mmduet2.checkpoint import save_checkpoint
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model, tok = model_tok
    ckpt = tmp_path / "ckpt"
    save_checkpoint(str(ckpt), MMDuet2(model.config), tok, torch.optim.SGD([torch.zeros(1)], lr=0.1), 0, {})
    gold = tmp_path / "gold.json"
    for task, flags, want in ((None, [], "benchmark"), (None, ["--rounds", "full"], None),
                              ("shapewatch", [], None)):
        recs = [dict(r, **({"task": task} if task else {})) for r in records(tmp_path, 1)]
        gold.write_text(json.dumps(recs))
        out = tmp_path / f"out_{task}_{len(flags)}"
        run = subprocess.run([sys.executable, os.path.join(root, "eval.py"), "--gold", str(gold), "--video-root",
                              str(tmp_path), "--checkpoint", str(ckpt), "--out", str(out), "--judge", "rule",
                              "--frame-interval", "1", "--max-new-tokens", "2", "--timelines", "0", *flags],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root), timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        meta = json.loads((out / "ckpt" / "predictions.jsonl.meta.json").read_text())
        assert meta.get("rounds") == want, (task, flags, meta)
