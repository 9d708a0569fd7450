"""Annotation loading (errors name file, record and field) and build_turns' SFT placement, on hand-made records."""
import copy
import json
import os

import pytest

from mmduet2.data import build_turns, load_dialogues, load_proactive_records


def record(duration=10.0, questions=((0, "Q0"),), answers=(), **extra):
    return {"id": "r", "video": "v.mp4", "duration": duration, "kind": "1qna",
            "questions": [{"time": t, "text": s} for t, s in questions],
            "answers": [dict(question=q, content=c, related_timespan=[a, b], reply_timespan=[a, b2], **kw)
                        for q, c, (a, b, b2), kw in answers], **extra}


def layout(turns):
    return [(t.time, t.frame_indices, t.user_text, t.reply, t.answer_index) for t in turns]


# ---------------------------------------------------------------------------------------------------------
# build_turns

def test_turn_times_frames_and_reply_at_end_of_span():
    rec = record(answers=[(0, "A", (3, 6, 7), {}), (0, "B", (7, 8, 9), {})])
    assert layout(build_turns(rec, frames_per_turn=2)) == [
        (2.0, [1, 2], "Q0", "NO REPLY", None),
        (4.0, [3, 4], None, "NO REPLY", None),
        (6.0, [5, 6], None, "A", 0),               # reply span [3, 7]: turns 4 and 6 lie inside, the last wins
        (8.0, [7, 8], None, "B", 1),               # [7, 9]: only turn 8
        (10.0, [9, 10], None, "NO REPLY", None)]
    one = build_turns(rec, frames_per_turn=1)       # 1 frame per turn: turn times 1..10, span ends are turns
    assert [(t.time, t.reply) for t in one if t.reply != "NO REPLY"] == [(7.0, "A"), (9.0, "B")]


def test_partial_last_turn_and_other_interval():
    turns = build_turns(record(duration=7.5), frames_per_turn=2)
    assert [(t.time, t.frame_indices) for t in turns] == [(2.0, [1, 2]), (4.0, [3, 4]), (6.0, [5, 6]), (7.0, [7])]
    rec = record(duration=3.0, frame_interval=0.5, answers=[(0, "A", (1.2, 1.4, 2.4), {})])
    turns = build_turns(rec, frames_per_turn=2)
    assert layout(turns) == [(1.0, [1, 2], "Q0", "NO REPLY", None), (2.0, [3, 4], None, "A", 0),
                             (3.0, [5, 6], None, "NO REPLY", None)]
    assert [t.time for t in build_turns(rec, frames_per_turn=2, frame_interval=1.0)] == [2.0, 3.0]


def test_questions_and_immediate_answers():
    rec = record(duration=12, questions=[(0, "Q0"), (5, "Q1"), (8, "Q2")],
                 answers=[(1, "now", (5, 5, 6), {"immediate": True}),
                          (2, "now2", (8, 8, 9), {"immediate": True}),
                          (1, "later", (6, 9, 10), {})])
    turns = build_turns(rec, frames_per_turn=2)
    assert [(t.time, t.user_text, t.reply) for t in turns] == [
        (2.0, "Q0", "NO REPLY"), (4.0, None, "NO REPLY"),
        (6.0, "Q1", "now"),                         # asked at 5: first turn at or after 5, answered right there
        (8.0, "Q2", "now2"),                        # asked exactly at a turn time: that turn
        (10.0, None, "later"), (12.0, None, "NO REPLY")]


def test_bad_turn_settings_are_one_sentence():
    for kw in ({"frames_per_turn": 0}, {"frame_interval": -1.0}, {"frame_interval": float("nan")}):
        with pytest.raises(ValueError, match=r"frames_per_turn=.* must be at least 1 and frame_interval=.* a positive"):
            build_turns(record(), **kw)


def test_empty_span_and_two_answers_on_one_turn():
    rec = record(answers=[(0, "gone", (4.2, 4.5, 5.5), {}),         # no turn time in [4.2, 5.5]
                          (0, "first", (1, 5, 6), {}), (0, "second", (5, 6, 7), {})])
    turns = build_turns(rec, frames_per_turn=2)
    assert [(t.time, t.reply, t.answer_index) for t in turns if t.reply != "NO REPLY"] == [
        (6.0, "second first", 2)]                   # both end up on turn 6: the later-ending one comes first
    assert all("gone" not in t.reply for t in turns)


# ---------------------------------------------------------------------------------------------------------
# Loading

def write_jsonl(tmp_path, records, name="train.jsonl"):
    (tmp_path / "v.mp4").write_bytes(b"")          # loading checks that the video exists, not that it decodes
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def good():
    return record(answers=[(0, "A", (3, 6, 7), {})])


def test_load_dialogues_resolves_paths_and_defaults(tmp_path):
    recs = load_dialogues(write_jsonl(tmp_path, [good(), {**good(), "id": "r2", "kind": "nqna"}]))
    assert [r["id"] for r in recs] == ["r", "r2"]
    assert recs[0]["video"] == os.path.join(str(tmp_path), "v.mp4") and recs[0]["frame_interval"] == 1.0


def bad(path, value):
    """good() with the field at `path` (a list of keys) set to `value` (or deleted when value is DELETE)."""
    rec = copy.deepcopy(good())
    *parents, last = path
    target = rec
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return rec


DELETE = object()
DIALOGUE_CASES = [
    (["id"], DELETE, "id must be present"),
    (["kind"], "3qna", 'kind must be "1qna" or "nqna"'),
    (["duration"], -1, "duration must be a positive number, not -1"),
    (["video"], "missing.mp4", "video must be an existing file or folder; .*missing.mp4 does not exist"),
    (["questions"], [], "questions must be a non-empty list"),
    (["questions", 0, "time"], 2, r"questions\[0\].time must be 0"),
    (["questions", 0, "text"], 5, r"questions\[0\].text must be a non-empty string"),
    (["answers", 0, "reply_timespan"], [7, 3], r"answers\[0\].reply_timespan must be \[start, end\] with start <= end"),
    (["answers", 0, "related_timespan"], [3, 60], r"answers\[0\].related_timespan must be inside the video"),
    (["answers", 0, "reply_timespan"], [float("nan"), 7], r"answers\[0\].reply_timespan must be \[start, end\] of "
                                                           r"finite numbers, not \[nan, 7\]"),   # NaN passed before
    (["answers", 0, "related_timespan"], [3, float("inf")], r"answers\[0\].related_timespan must be \[start, end\] "
                                                             "of finite numbers"),
    (["answers", 0, "question"], 1, r"answers\[0\].question must be an index into questions \(0..0\), not 1"),
    (["answers", 0, "immediate"], "yes", r"answers\[0\].immediate must be true or false"),
    (["answers", 0, "content"], DELETE, r"answers\[0\].content must be present"),
]


@pytest.mark.parametrize("field,value,message", DIALOGUE_CASES)
def test_dialogue_errors_name_file_record_field(tmp_path, field, value, message):
    path = write_jsonl(tmp_path, [good(), {**good(), "id": "x"}, bad(field, value)])
    with pytest.raises(ValueError, match=r"train.jsonl record 2 \(line 3\): " + message):
        load_dialogues(path)


def test_dialogue_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl does not exist"):
        load_dialogues(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.jsonl holds no records"):
        load_dialogues(str(tmp_path / "empty.jsonl"))
    path = write_jsonl(tmp_path, [good()])
    with open(path, "a") as f:
        f.write("\n{not json\n")                     # a blank line is skipped, not counted
    with pytest.raises(ValueError, match=r"train.jsonl record 1 \(line 3\): not valid JSON"):
        load_dialogues(path)
    with pytest.raises(ValueError, match="id 'r' is used by more than one record"):
        load_dialogues(write_jsonl(tmp_path, [good(), good()]))
    (tmp_path / "frames").mkdir()
    with pytest.raises(ValueError, match=r"record 0 \(line 1\): fps \(required for a frame folder\) must be present"):
        load_dialogues(write_jsonl(tmp_path, [{**good(), "video": "frames"}]))
    assert load_dialogues(write_jsonl(tmp_path, [{**good(), "video": "frames", "fps": 2}]))[0]["fps"] == 2


def proactive():
    return {"video": "videos/a.mp4", "question_id": "a", "duration": 20.0, "task": "shapewatch",
            "conversation": [{"role": "user", "content": "Q?", "time": 0.0}],
            "answer": [{"role": "assistant", "content": "A.", "related_timespan": [3, 8], "reply_timespan": [3, 9]}]}


def test_proactive_records(tmp_path):
    path = tmp_path / "gold.json"
    path.write_text(json.dumps([proactive(), {**proactive(), "question_id": "b", "answer": []}]))
    assert [r["question_id"] for r in load_proactive_records(str(path))] == ["a", "b"]
    cases = [({"question_id": 3}, "question_id must be a string"),
             ({"conversation": [{"role": "user", "content": "Q?", "time": 4}]}, r"conversation\[0\].time must be 0"),
             ({"conversation": [{"role": "assistant", "content": "Q?", "time": 0}]}, r"conversation\[0\] must be"),
             ({"answer": [{**proactive()["answer"][0], "reply_timespan": [3, 25]}]},
              r"answer\[0\].reply_timespan must be inside the video \[0, 20.0\]"),
             ({"answer": [{**proactive()["answer"][0], "related_timespan": [3]}]},
              r"answer\[0\].related_timespan must be \[start, end\]"),
             ({"duration": "long"}, "duration must be a number")]
    for change, message in cases:
        path.write_text(json.dumps([proactive(), {**proactive(), "question_id": "b", **change}]))
        with pytest.raises(ValueError, match=r"gold.json record 1: " + message):
            load_proactive_records(str(path))
    path.write_text("[]")
    with pytest.raises(ValueError, match="gold.json holds no records"):
        load_proactive_records(str(path))
    path.write_text(json.dumps({"a": proactive()}))
    with pytest.raises(ValueError, match="gold.json must hold a JSON list"):
        load_proactive_records(str(path))
    path.write_text(json.dumps([proactive(), proactive()]))
    with pytest.raises(ValueError, match="question_id 'a' is used by more than one record"):
        load_proactive_records(str(path))
    with pytest.raises(FileNotFoundError, match="none.json does not exist"):
        load_proactive_records(str(tmp_path / "none.json"))
