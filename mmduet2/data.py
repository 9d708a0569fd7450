"""Proactive dialogue data: loading and checking annotation files, and laying a dialogue out as turns.

Two formats (both in docs/scaling.md, "Data formats"). The training-dialogue JSONL holds one streaming dialogue per
line (questions with times, answers with related / reply time spans, 1QnA or nQnA); ProactiveVideoQA JSON
(docs/method.md section 4) is the benchmark's list of records with one question at time 0 and gold answer turns.
Every record is checked on load, and a bad one stops loading with one sentence naming the file, the record and the
field.

`build_turns` is the SFT layout of docs/method.md sections 1 and 3.1: each turn shows the next `frames_per_turn`
frames and is stamped with the time of its last frame; a question joins the first turn at or after it; an answer's
reply sits on the LAST turn inside its reply span (the paper's SFT placement: the reply comes once the scene has
been seen), an immediate answer on its question's own turn; every other turn replies "NO REPLY". Departures: two
answers landing on one turn are joined with a space, the later-ending one first; a question after the last turn
(the video ends within one turn) is dropped with its answers; the last turn may hold fewer frames.
"""
import json
import math
import os
from .dialogue import Turn

EPS = 1e-6


# -------------------------------------------------------------------------------------------- Checking fields

class _Checker:
    """Raises ValueError('<file> record <i>: <field> must be ...') for the record being checked."""

    def __init__(self, path, index, where=""):
        self.prefix = f"{path} record {index}{where}"

    def fail(self, field, what):
        raise ValueError(f"{self.prefix}: {field} must be {what}; fix or remove the record.")

    def get(self, obj, key, field, types, what, optional=False, nonempty=False):
        if key not in obj:
            if optional:
                return None
            self.fail(field, f"present ({what})")
        value = obj[key]
        if not isinstance(value, types) or isinstance(value, bool) and types is not bool:   # JSON true is no number
            self.fail(field, what)
        if nonempty and not (value.strip() if isinstance(value, str) else value):
            self.fail(field, what)
        return value

    def number(self, obj, key, field, hi=None, optional=False):
        """A positive number, or with `hi` a number in [0, hi]."""
        v = self.get(obj, key, field, (int, float), "a number", optional)
        if v is not None and not (math.isfinite(v) and (v > 0 if hi is None else -EPS <= v <= hi + EPS)):
            self.fail(field, f"a positive number, not {v}" if hi is None else f"a number in [0, {hi}], not {v}")
        return v

    def span(self, obj, key, field, duration):
        v = self.get(obj, key, field, list, "[start, end] with start <= end")
        if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) or v[0] > v[1]:
            self.fail(field, "[start, end] with start <= end")
        if not all(map(math.isfinite, v)):  # json reads NaN and Infinity, and NaN slips past every comparison
            self.fail(field, f"[start, end] of finite numbers, not {v}")
        if v[0] < -EPS or v[1] > duration + EPS:
            self.fail(field, f"inside the video [0, {duration}], not {v}")
        return v


def _check_dialogue(rec, c, folder):
    if not isinstance(rec, dict):
        c.fail("the record", "a JSON object")
    c.get(rec, "id", "id", str, "a string")
    video = c.get(rec, "video", "video", str, "a path (video file or frame folder)")
    duration = c.number(rec, "duration", "duration")
    rec["frame_interval"] = c.number(rec, "frame_interval", "frame_interval", optional=True) or 1.0
    if c.get(rec, "kind", "kind", str, '"1qna" or "nqna"') not in ("1qna", "nqna"):
        c.fail("kind", '"1qna" or "nqna"')
    rec["video"] = video = os.path.join(folder, video)          # absolute paths stay as they are
    if not os.path.exists(video):
        c.fail("video", f"an existing file or folder; {video} does not exist")
    if os.path.isdir(video):
        c.number(rec, "fps", "fps (required for a frame folder)")
    questions = c.get(rec, "questions", "questions", list, "a non-empty list", nonempty=True)
    for j, q in enumerate(questions):
        if not isinstance(q, dict):
            c.fail(f"questions[{j}]", '{"time": ..., "text": ...}')
        t = c.number(q, "time", f"questions[{j}].time", hi=duration)
        if j == 0 and t > EPS:
            c.fail("questions[0].time", "0 (the first question opens the dialogue)")
        if j > 0 and t < questions[j - 1]["time"]:
            c.fail(f"questions[{j}].time", f">= questions[{j - 1}].time (questions in time order)")
        c.get(q, "text", f"questions[{j}].text", str, "a non-empty string", nonempty=True)
    for j, a in enumerate(c.get(rec, "answers", "answers", list, "a list")):
        f = f"answers[{j}]"
        if not isinstance(a, dict):
            c.fail(f, "an object with question, content, related_timespan, reply_timespan")
        qi = c.get(a, "question", f"{f}.question", int, "an index into questions")
        if not 0 <= qi < len(questions):
            c.fail(f"{f}.question", f"an index into questions (0..{len(questions) - 1}), not {qi}")
        c.get(a, "content", f"{f}.content", str, "a string")
        c.span(a, "related_timespan", f"{f}.related_timespan", duration)
        c.span(a, "reply_timespan", f"{f}.reply_timespan", duration)
        c.get(a, "immediate", f"{f}.immediate", bool, "true or false", optional=True)
    return rec


def _check_proactive(rec, c):
    if not isinstance(rec, dict):
        c.fail("the record", "a JSON object")
    c.get(rec, "video", "video", str, "a path relative to the video root")
    c.get(rec, "question_id", "question_id", str, "a string")
    duration = c.number(rec, "duration", "duration")
    c.get(rec, "task", "task", str, "a string", optional=True)
    conv = c.get(rec, "conversation", "conversation", list, "a non-empty list of user turns", nonempty=True)
    for j, m in enumerate(conv):
        if not isinstance(m, dict) or m.get("role") != "user":
            c.fail(f"conversation[{j}]", 'a {"role": "user", "content": ..., "time": ...} object')
        c.get(m, "content", f"conversation[{j}].content", str, "a string")
        t = c.number(m, "time", f"conversation[{j}].time", hi=duration)
        if j == 0 and t > EPS:
            c.fail("conversation[0].time", "0 (the question comes first)")
    for j, a in enumerate(c.get(rec, "answer", "answer", list, "a list of assistant turns")):
        if not isinstance(a, dict) or a.get("role") != "assistant":
            c.fail(f"answer[{j}]", 'a {"role": "assistant", "content": ..., ...} object')
        c.get(a, "content", f"answer[{j}].content", str, "a string")
        c.span(a, "related_timespan", f"answer[{j}].related_timespan", duration)
        c.span(a, "reply_timespan", f"answer[{j}].reply_timespan", duration)
    return rec


# ---------------------------------------------------------------------------------------------------- Loading

def load_dialogues(path):
    """Training dialogues from a JSONL file, checked; `video` is resolved against the file's folder."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: generate it (python shapewatch.py) or fix the path.")
    records, folder = [], os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no records: write one dialogue per line (python shapewatch.py makes some).")
    for i, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} record {i} (line {n}): not valid JSON ({e.msg}); fix or remove it.") from None
        records.append(_check_dialogue(rec, _Checker(path, i, f" (line {n})"), folder))
    return _unique(path, records, "id")


def load_proactive_records(path):
    """ProactiveVideoQA records (a JSON list), checked; `video` stays relative to the video root."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: generate it (python shapewatch.py) or fix the path.")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file.") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records, not a {type(data).__name__}.")
    if not data:
        raise ValueError(f"{path} holds no records: it must list the benchmark's records.")
    records = [_check_proactive(rec, _Checker(path, i)) for i, rec in enumerate(data)]
    return _unique(path, records, "question_id")


def _unique(path, records, key):
    seen = set()
    for r in records:
        if r[key] in seen:
            raise ValueError(f"{path}: {key} {r[key]!r} is used by more than one record; ids must be unique.")
        seen.add(r[key])
    return records


# ------------------------------------------------------------------------------------------------------ Turns

def build_turns(record, frames_per_turn=2, frame_interval=None):
    """Lay a dialogue record out as turns (see the module docstring). Returns a list of dialogue.Turn."""
    interval = frame_interval or record.get("frame_interval", 1.0)
    if not frames_per_turn >= 1 or not 0 < interval < math.inf:
        raise ValueError(f"frames_per_turn={frames_per_turn} must be at least 1 and frame_interval={interval} a "
                         "positive number of seconds.")
    n_frames = int(math.floor(record["duration"] / interval + EPS))
    turns = []
    for first in range(1, n_frames + 1, frames_per_turn):
        idx = list(range(first, min(first + frames_per_turn, n_frames + 1)))
        turns.append(Turn(idx[-1] * interval, idx))

    def first_turn_at_or_after(t):
        return next((k for k, turn in enumerate(turns) if turn.time >= t - EPS), None)

    question_turn = [first_turn_at_or_after(q["time"]) for q in record["questions"]]
    for q, k in zip(record["questions"], question_turn):
        if k is not None:
            turns[k].user_text = q["text"] if turns[k].user_text is None else turns[k].user_text + " " + q["text"]
    placed = {}                                                  # turn -> answer indices
    for i, a in enumerate(record["answers"]):
        if a.get("immediate"):
            k = question_turn[a["question"]]
        else:
            start, end = a["reply_timespan"]
            inside = [k for k, turn in enumerate(turns) if start - EPS <= turn.time <= end + EPS]
            k = inside[-1] if inside else None                  # a span holding no turn gets no reply
        if k is not None:
            placed.setdefault(k, []).append(i)
    for k, idx in placed.items():
        idx.sort(key=lambda i: -record["answers"][i]["reply_timespan"][1])
        turns[k].reply = " ".join(record["answers"][i]["content"] for i in idx)
        turns[k].answer_index = idx[0]
    return turns
