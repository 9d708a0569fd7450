"""Convert MMDuet2's released training data into this project's training dialogues (the JSONL that train_sft.py and
train_rl.py read: docs/scaling.md, "Data formats"; the layout is docs/method.md sections 1, 3.1 and 3.2).

    python convert.py ms-swift SFT.jsonl OUT.jsonl --frame-interval 2
    python convert.py verl RL.parquet OUT.jsonl [--user-turns RL-user_turns.json]

Both released formats are chats whose user turns carry frames and whose assistant turns reply or say "NO REPLY".
The k-th frame of a dialogue is shown at video time k * frame_interval and a turn is stamped with the time of its
last frame (the released proactive_eval/inference.py: video_time += frames * frame_interval), as here. A question
is the text of a user turn: the first one (on the first turn) is asked at time 0, a later one at its turn's time.

ms-swift (SFT) rows: {"messages": [system, user, assistant, user, ...], "images": [frame paths, in order],
"metadata": {...}}, each user turn one "<image>" per frame and then any text. The rows carry no times and no spans:
--frame-interval gives the times, and each reply becomes an answer over its own turn, [previous turn's time, its
time], which build_turns puts back on that turn (the last turn of its span; a reply on the turn a later question
arrives is marked immediate). The SFT dialogue is reproduced exactly, but these spans are no ground truth for RL.

verl (RL) rows (the released rl/verl code): "prompt" (messages, each with "last_image_time", the time of its last
frame), "images" ([{"image": path, "type": "image"}] for the prompt's "<image>"s), "reward_model": {"ground_truth":
{"answer": [{"content", "question" (its text), "reply_timespan"}], "model_pred_timestamps" (the time of each turn
the policy plays), "question_id", "prev_assistant_replies"}} and "extra_info". The prompt holds the context turns
(with their gold replies) and the episode's first turn; the later user turns, with their frames and any question,
are fed during the rollout by verl/tools/online_video_provider.py from a separate "...-user_turns.json"
({question_id: [user turn, ...]}): pass it as --user-turns to take them over. Without it the frames after the
prompt come from the frame folder and a question asked after the prompt cannot be placed. Answers keep their reply
span (cut at the episode's end; one starting after it is dropped, as the released reward skips it), and their
related_timespan, which verl rows lack, is set to it. A context reply that no answer carries becomes an answer over
its own turn, as for ms-swift. prev_assistant_replies is not needed: the context replies are the record's answers.

Frames -> video. A record's video is the folder of its frames, read as mmduet2.video reads a folder (the files
sorted by name are pictures 0, 1, 2, ... at i / fps; frame k is file floor(k * interval * fps)). The converter
checks that this shows exactly the listed frames, with --fps the folder's rate (default 1 / frame_interval). When
it does not (frames in several folders, or a folder of exactly the listed frames, whose first file is frame 1),
--link-frames DIR gives each dialogue a folder of symlinks, DIR/<id>/, that shows its frames at their times.
Every malformed row is one sentence naming the file, the row and the field; nothing is written unless all rows
convert (--skip-bad writes the others), and the output is checked with mmduet2.data.load_dialogues.
"""
import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass

from mmduet2.checkpoint import atomic_path
from mmduet2.data import load_dialogues
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT
from mmduet2.video import IMAGE_EXTS

EPS = 1e-6
_MISSING = object()


class RowError(ValueError):
    """A malformed row: '<file> row <n>: <field> must be ...; fix or drop the row.'"""


class Row:
    def __init__(self, path, n):
        self.where = f"{path} row {n}"

    def fail(self, field, what):
        raise RowError(f"{self.where}: {field} must be {what}; fix or drop the row.")

    def get(self, obj, key, field, types, what, default=_MISSING):
        if not isinstance(obj, dict) or key not in obj or obj[key] is None:
            if default is not _MISSING:
                return default
            self.fail(field, f"present ({what})")
        if not isinstance(obj[key], types):
            self.fail(field, what)
        return obj[key]

    def number(self, value, field, what="a finite number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(field, what)
        return float(value)


@dataclass
class ChatTurn:
    time: float          # video time of the turn's last frame
    start: float         # the previous turn's time (0 for the first turn)
    text: str            # what the user says after the frames ("" for nothing)
    reply: str | None    # the assistant's answer; None where the row has none (the turns a verl policy plays)
    field: str           # where the user turn sits in the row, for errors


# ---------------------------------------------------------------------------------------------------------
# Reading

def read_rows(path):
    """(row number, row) pairs of a JSONL file, a JSON list or (with pyarrow) a parquet file; a line that is not
    JSON becomes a RowError in its place."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: pass the released .jsonl, .json or .parquet file.")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path} is a parquet file, which needs pyarrow: pip install pyarrow (or pass the rows "
                             "as JSON or JSONL).") from None
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            data = _load_json(f, path)
            if not isinstance(data, list):
                raise ValueError(f"{path} must hold a JSON list of rows, not a {type(data).__name__}.")
            return list(enumerate(data, 1))
        rows = []
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    rows.append((n, RowError(f"{path} row {n}: the row must be valid JSON ({e.msg}); fix or drop "
                                             "the row.")))
        return rows


def _load_json(f, path):
    try:
        return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file.") from None


def read_user_turns(path):
    """verl's user-turn file: {question_id: [{"content": [...]}, ...]}."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: pass the '...-user_turns.json' that came with the verl rows.")
    with open(path, encoding="utf-8") as f:
        data = _load_json(f, path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map question ids to lists of user turns, not hold a {type(data).__name__}.")
    return data


# ---------------------------------------------------------------------------------------------------------
# User turns and frames

def user_content(row, content, field, root):
    """(frames, text) of one user message: a string with one "<image>" per frame (the frames come from the row's
    "images"; here None each), or a list of {"type": "image", "image": path} and {"type": "text", "text": ...}."""
    if isinstance(content, str):
        if "<video>" in content:
            row.fail(field, 'frames as "<image>" placeholders (a <video> is offline video QA, not a streaming '
                     'dialogue)')
        return [None] * content.count("<image>"), content.replace("<image>", "").strip()
    if not isinstance(content, list):
        row.fail(field, 'a string with "<image>" placeholders or a list of image and text items')
    frames, text = [], []
    for j, item in enumerate(content):
        if isinstance(item, dict) and ("image" in item or item.get("type") == "image"):
            frames.append(frame_file(row, item, f"{field}[{j}]", root))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            text.append(item["text"])
        else:
            row.fail(f"{field}[{j}]", '{"type": "image", "image": path} or {"type": "text", "text": ...}')
    return frames, "".join(text).strip()


def frame_file(row, item, field, root):
    """A frame's path from a string, {"image": path} (qwen-vl) or {"path": path} (ms-swift); "file://" stripped,
    relative paths resolved against `root`."""
    path = item.get("image", item.get("path")) if isinstance(item, dict) else item
    if not isinstance(path, str) or not path:
        row.fail(field, 'a frame path (a string, {"image": path} or {"path": path})')
    path = path[len("file://"):] if path.startswith("file://") else path
    if not path.lower().endswith(IMAGE_EXTS):
        row.fail(field, f"a .jpg, .jpeg or .png frame (mmduet2.video reads only those), not {path}")
    return os.path.normpath(os.path.join(root, path))


def frames_video(row, frames, interval, duration, opts, rec_id):
    """(folder, fps) that mmduet2.video reads as these frames, frames[k - 1] at k * interval, for `duration` s."""
    needed = int(round(duration / interval))
    if opts.link_frames:
        return link_frames(row, frames, interval, needed, opts.link_frames, rec_id)
    folders = sorted({os.path.dirname(f) for f in frames})
    if len(folders) != 1:
        row.fail("images", f"frames of one folder, not of {len(folders)}; or pass --link-frames DIR to give each "
                 "dialogue a folder of its own")
    folder, fps = folders[0], opts.fps or 1 / interval
    if not os.path.isdir(folder):
        row.fail("images", f"existing frames; {folder} does not exist (fix --image-root)")
    files = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
    if not files:
        row.fail("images", f"existing frames; {folder} holds no .jpg/.png files")
    for k, f in enumerate(frames, 1):
        shown = files[min(int(math.floor(k * interval * fps + EPS)), len(files) - 1)]
        if shown != os.path.basename(f):
            row.fail(f"images[{k - 1}]", f"the file {folder} shows at {k * interval:g} s (at --fps {fps:g}: {shown}), "
                     f"not {os.path.basename(f)}; pass the folder's --fps, or --link-frames DIR to make a folder of "
                     "exactly the listed frames")
    if int(math.floor(len(files) / fps / interval + EPS)) < needed:
        row.fail("images", f"a folder with frames up to {duration:g} s; {folder} holds {len(files) / fps:g} s at "
                 f"--fps {fps:g}")
    return folder, fps


def link_frames(row, frames, interval, needed, link_dir, rec_id):
    """DIR/<id>/: file 0 is the first frame (the picture at time 0), file k is frame k, so fps = 1 / interval."""
    if len(frames) < needed:
        row.fail("images", f"the {needed} frames up to the episode's last turn to link, not {len(frames)} (pass "
                 "--user-turns with the turns after the prompt)")
    for j, f in enumerate(frames):
        if not os.path.isfile(f):
            row.fail(f"images[{j}]", f"an existing file; {f} does not exist (fix --image-root)")
    folder = os.path.join(link_dir, re.sub(r"[^\w.@+-]", "_", rec_id).strip(".") or "_")
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # only links this converter made are replaced
        if not os.path.islink(os.path.join(folder, name)):
            raise ValueError(f"{folder} holds {name}, which is not a frame link: give --link-frames a folder of its "
                             "own.")
        os.remove(os.path.join(folder, name))
    for k, f in enumerate([frames[0]] + frames[:needed]):
        os.symlink(os.path.abspath(f), os.path.join(folder, f"{k:06d}{os.path.splitext(f)[1].lower()}"))
    return folder, 1 / interval


# ---------------------------------------------------------------------------------------------------------
# Turns -> questions and answers

def questions_and_answers(row, turns):
    """Questions from the turns' texts; every reply other than "NO REPLY" an answer over its own turn."""
    questions, answers = [], []
    for k, turn in enumerate(turns):
        if turn.text:
            if not questions and k > 0:
                row.fail(turns[0].field, "a user turn with the question after its frames (a dialogue opens with its "
                         "question, at time 0)")
            questions.append({"time": turn.time if questions else 0.0, "text": turn.text})
        if turn.reply is not None and turn.reply != NO_REPLY:
            if not questions:
                row.fail(turns[0].field, "a user turn with the question after its frames (the reply on it has no "
                         "question)")
            answers.append({"question": len(questions) - 1, "content": turn.reply,
                            "related_timespan": [turn.start, turn.time], "reply_timespan": [turn.start, turn.time]})
            if turn.text and len(questions) > 1:
                answers[-1]["immediate"] = True
    if not questions:
        row.fail(turns[0].field, "a user turn with a question (text after its frames)")
    return questions, answers


def chat_pairs(row, messages, field, allow_open_end):
    """Split [system?, user, assistant, user, ...] into (system text or None, [(index, user, reply or None)])."""
    if not messages:
        row.fail(field, "a non-empty list of chat messages")
    system, pairs, i = None, [], 0
    if isinstance(messages[0], dict) and messages[0].get("role") == "system":
        system = row.get(messages[0], "content", f"{field}[0].content", str, "a string")
        i = 1
    while i < len(messages):
        if row.get(messages[i], "role", f"{field}[{i}].role", str, '"user"') != "user":
            row.fail(f"{field}[{i}].role", '"user" (after the system message, user and assistant turns alternate)')
        if i + 1 == len(messages):
            if not allow_open_end:
                row.fail(field, f"a chat that ends with the assistant's reply to {field}[{i}]")
            pairs.append((i, messages[i], None))
            break
        if row.get(messages[i + 1], "role", f"{field}[{i + 1}].role", str, '"assistant"') != "assistant":
            row.fail(f"{field}[{i + 1}].role", '"assistant" (user and assistant turns alternate)')
        reply = row.get(messages[i + 1], "content", f"{field}[{i + 1}].content", str, "a string").strip()
        pairs.append((i, messages[i], reply))
        i += 2
    if not pairs:
        row.fail(field, "a chat with at least one user turn")
    if pairs[-1][2] is not None and allow_open_end:
        row.fail(field, "a chat that ends with a user turn (the turn the policy answers first)")
    return system, pairs


def record(rec_id, video, fps, duration, interval, questions, answers, source):
    return {"id": rec_id, "video": video, "fps": fps, "duration": duration, "frame_interval": interval,
            "kind": "1qna" if len(questions) == 1 else "nqna", "questions": questions,
            "answers": sorted(answers, key=lambda a: (a["reply_timespan"][1], a["reply_timespan"][0])),
            "source": source}


# ---------------------------------------------------------------------------------------------------------
# The two formats

def from_ms_swift(obj, row, opts, default_id):
    """One ms-swift SFT row -> (record, system prompt)."""
    if not isinstance(obj, dict):
        row.fail("the row", 'a JSON object with "messages" and "images"')
    interval = opts.frame_interval
    images = row.get(obj, "images", "images", list, "a list of frame paths")
    metadata = row.get(obj, "metadata", "metadata", dict, "an object", default={})
    system, pairs = chat_pairs(row, row.get(obj, "messages", "messages", list, "a list of chat messages"), "messages",
                               allow_open_end=False)
    turns, n = [], 0
    for i, user, reply in pairs:
        field = f"messages[{i}].content"
        frames, text = user_content(row, row.get(user, "content", field, (str, list), "a string"), field, opts.root)
        if not frames or any(f is not None for f in frames):
            row.fail(field, 'a string with one "<image>" per frame (every user turn of a streaming dialogue shows '
                     'frames)')
        turns.append(ChatTurn((n + len(frames)) * interval, n * interval, text, reply, f"messages[{i}]"))
        n += len(frames)
    if len(images) != n:
        row.fail("images", f'one frame path per "<image>" in messages ({n}), not {len(images)}')
    frames = [frame_file(row, item, f"images[{j}]", opts.root) for j, item in enumerate(images)]
    questions, answers = questions_and_answers(row, turns)
    rec_id = str(metadata.get("question_id") or metadata.get("id") or default_id)
    video, fps = frames_video(row, frames, interval, n * interval, opts, rec_id)
    return record(rec_id, video, fps, n * interval, interval, questions, answers,
                  {"format": "ms-swift", "row": row.where, "metadata": metadata}), system


def from_verl(obj, row, opts, default_id):
    """One verl RL row (with opts.user_turns, the episode's later user turns too) -> (record, system prompt)."""
    if not isinstance(obj, dict):
        row.fail("the row", 'a JSON object with "prompt", "images" and "reward_model"')
    gt_field = "reward_model.ground_truth"
    gt = row.get(row.get(obj, "reward_model", "reward_model", dict, "an object"), "ground_truth", gt_field, dict,
                 "an object")
    qid = row.get(gt, "question_id", f"{gt_field}.question_id", str, "a string")
    pred_times = row.get(gt, "model_pred_timestamps", f"{gt_field}.model_pred_timestamps", list, "a list of times")
    pred_times = [row.number(t, f"{gt_field}.model_pred_timestamps[{j}]") for j, t in enumerate(pred_times)]
    if not pred_times or any(b < a - EPS for a, b in zip(pred_times, pred_times[1:])):
        row.fail(f"{gt_field}.model_pred_timestamps", "a non-empty list of times in increasing order")
    system, pairs = chat_pairs(row, row.get(obj, "prompt", "prompt", list, "a list of chat messages"), "prompt",
                               allow_open_end=True)

    # the prompt's user turns: frames (from "images"), text, and last_image_time, which gives the frame interval
    parsed, n, stamps = [], 0, []
    for i, user, reply in pairs:
        field = f"prompt[{i}].content"
        frames, text = user_content(row, row.get(user, "content", field, (str, list), "a string"), field, opts.root)
        if not frames:
            row.fail(field, 'one "<image>" per frame (every user turn of a streaming dialogue shows frames)')
        n += len(frames)
        parsed.append((i, frames, text, reply))
        if user.get("last_image_time") is not None:
            stamps.append((n, row.number(user["last_image_time"], f"prompt[{i}].last_image_time"), i))
    interval = opts.frame_interval or (stamps[0][1] / stamps[0][0] if stamps else None)
    if not interval or interval <= 0:
        row.fail(f"prompt[{pairs[0][0]}].last_image_time", "the positive time of the turn's last frame (or pass "
                 "--frame-interval)")
    for frames_so_far, stamp, i in stamps:
        if abs(stamp - frames_so_far * interval) > EPS * max(1.0, stamp):
            row.fail(f"prompt[{i}].last_image_time", f"{frames_so_far} frames x {interval:g} s = "
                     f"{frames_so_far * interval:g} s (the time of the turn's last frame), not {stamp:g}")
    images = row.get(obj, "images", "images", list, "a list of frames", default=[])
    n_placeholders = sum(f is None for _, frames, _, _ in parsed for f in frames)
    if len(images) != n_placeholders:
        row.fail("images", f'one frame per "<image>" in prompt ({n_placeholders}), not {len(images)}')
    listed = iter(frame_file(row, item, f"images[{j}]", opts.root) for j, item in enumerate(images))
    turns, frames, t = [], [], 0.0
    for i, fs, text, reply in parsed:
        frames += [next(listed) if f is None else f for f in fs]
        turns.append(ChatTurn(len(frames) * interval, t, text, reply, f"prompt[{i}]"))
        t = len(frames) * interval

    # the turns after the prompt, from the user-turn file the released rollout reads them from
    if opts.user_turns is not None:
        tools = (obj.get("extra_info") or {}).get("tools_kwargs") or {}
        key = ((tools.get("online_video_provider") or {}).get("execute_kwargs") or {}).get("question_id", qid)
        later = opts.user_turns.get(key)
        if not isinstance(later, list) or len(later) < len(turns):
            row.fail(f"{gt_field}.question_id", f"a question id with its user turns in --user-turns ({key!r} has "
                     f"{'none' if not isinstance(later, list) else len(later)}, the prompt alone {len(turns)})")
        for j, user in enumerate(later[len(turns):], len(turns)):
            field = f"user_turns[{key!r}][{j}].content"
            fs, text = user_content(row, row.get(user, "content", field, (str, list), "a list"), field, opts.root)
            if not fs or any(f is None for f in fs):
                row.fail(field, 'a list with an {"type": "image", "image": path} item per frame')
            frames += fs
            turns.append(ChatTurn(len(frames) * interval, t, text, None, f"user_turns[{key!r}][{j}]"))
            t = len(frames) * interval
        played = [turn.time for turn in turns[len(parsed) - 1:]]
    else:
        played = [turns[-1].time]
    for j, (want, got) in enumerate(zip(played, pred_times)):
        if abs(want - got) > EPS * max(1.0, want):
            row.fail(f"{gt_field}.model_pred_timestamps[{j}]", f"{want:g} s, the time of the episode's turn {j} (the "
                     f"prompt's last user turn is turn 0), not {got:g}")
    off_grid = next((j for j, x in enumerate(pred_times) if abs(x / interval - round(x / interval)) > EPS), None)
    if off_grid is not None:
        row.fail(f"{gt_field}.model_pred_timestamps[{off_grid}]", f"a multiple of the frame interval {interval:g} s, "
                 f"not {pred_times[off_grid]:g}")
    duration = max(pred_times[-1], turns[-1].time)

    # questions from the turns; gold answers matched to them by text; context replies no answer carries
    questions, context = questions_and_answers(row, turns)
    answers, gold = [], set()
    for j, a in enumerate(row.get(gt, "answer", f"{gt_field}.answer", list, "a list of answers")):
        f = f"{gt_field}.answer[{j}]"
        content = row.get(a, "content", f"{f}.content", str, "a string").strip()
        text = row.get(a, "question", f"{f}.question", str, "the text of the question it answers").strip()
        span = row.get(a, "reply_timespan", f"{f}.reply_timespan", list, "[start, end]")
        if len(span) != 2:
            row.fail(f"{f}.reply_timespan", "[start, end]")
        start, end = (row.number(x, f"{f}.reply_timespan") for x in span)
        if not 0 <= start <= end:
            row.fail(f"{f}.reply_timespan", f"[start, end] with 0 <= start <= end, not {span}")
        asked = [k for k, q in enumerate(questions) if q["text"] == text]
        if not asked:
            row.fail(f"{f}.question", "the text of a question the row asks (in the prompt" + (
                ")" if opts.user_turns is not None else ", or in the later turns that --user-turns adds)") +
                f", not {text!r}")
        if start > duration + EPS:
            continue  # after the episode's last turn: the released reward skips it too
        q = max((k for k in asked if questions[k]["time"] <= end + EPS), default=asked[0])
        span = [min(start, duration), min(end, duration)]
        answers.append({"question": q, "content": content, "related_timespan": span, "reply_timespan": list(span)})
        gold.add(content)
    answers += [a for a in context if a["content"] not in gold]
    video, fps = frames_video(row, frames, interval, duration, opts, qid)
    return record(qid, video, fps, duration, interval, questions, answers,
                  {"format": "verl", "row": row.where, "question_id": qid}), system


# ---------------------------------------------------------------------------------------------------------
# Files

def convert(fmt, in_path, opts):
    """All rows of `in_path` -> (records, error sentences, rows with another system prompt)."""
    convert_row = {"ms-swift": from_ms_swift, "verl": from_verl}[fmt]
    stem = os.path.splitext(os.path.basename(in_path))[0]
    records, errors, other_system, seen = [], [], 0, set()
    for n, obj in read_rows(in_path):
        try:
            if isinstance(obj, RowError):
                raise obj
            rec, system = convert_row(obj, Row(in_path, n), opts, f"{stem}-{n}")
        except RowError as e:
            errors.append(str(e))
            continue
        if rec["id"] in seen:  # a question with several rows (episodes): ids must be unique
            rec["id"] = f"{rec['id']}@row{n}"
        seen.add(rec["id"])
        other_system += system is not None and system.strip() != SYSTEM_PROMPT
        records.append(rec)
    return records, errors, other_system


def write(records, out_path):
    """Write the records (videos relative to the output's folder) and check the file loads."""
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps({**rec, "video": os.path.relpath(rec["video"], folder)}, ensure_ascii=False) + "\n")
    try:
        return load_dialogues(out_path)
    except ValueError as e:
        raise ValueError(f"{out_path} was written but does not load ({e}): a converter bug, please report "
                         "it.") from None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("format", choices=["ms-swift", "verl"], help="ms-swift: the SFT JSONL; verl: the RL rows")
    ap.add_argument("input", help="the released file (.jsonl, .json, or .parquet with pyarrow installed)")
    ap.add_argument("output", help="the training-dialogue JSONL to write")
    ap.add_argument("--frame-interval", type=float, default=None,
                    help="seconds per frame (required for ms-swift; verl rows give it by last_image_time)")
    ap.add_argument("--fps", type=float, default=None,
                    help="the frame folders' rate, file i shown at i / fps (default: 1 / frame interval)")
    ap.add_argument("--image-root", default=None, help="folder that relative frame paths are under (default: the "
                    "input's folder)")
    ap.add_argument("--user-turns", default=None, help="verl: the '...-user_turns.json' with the episodes' later "
                    "user turns (their frames and questions)")
    ap.add_argument("--link-frames", default=None, help="make DIR/<id>/, a folder of links to each dialogue's "
                    "frames, instead of using the frames' own folder")
    ap.add_argument("--skip-bad", action="store_true", help="write the rows that convert even if others do not")
    args = ap.parse_args(argv)
    if args.format == "ms-swift" and not args.frame_interval:
        ap.error("ms-swift rows carry no times: pass --frame-interval (the released SFT data uses 2 s per frame).")
    for name in ("frame_interval", "fps"):
        if getattr(args, name) is not None and not 0 < getattr(args, name) < math.inf:
            ap.error(f"--{name.replace('_', '-')} must be a positive number, not {getattr(args, name)}.")
    print("convert:", json.dumps(vars(args)))
    try:
        opts = argparse.Namespace(frame_interval=args.frame_interval, fps=args.fps, link_frames=args.link_frames,
                                  root=args.image_root or os.path.dirname(os.path.abspath(args.input)),
                                  user_turns=read_user_turns(args.user_turns) if args.user_turns else None)
        records, errors, other_system = convert(args.format, args.input, opts)
        for e in errors:
            print(e, file=sys.stderr)
        total = len(records) + len(errors)
        if errors and not args.skip_bad or not records:
            sys.exit(f"{len(errors)} of {total} rows of {args.input} do not convert; nothing was written (fix them, "
                     "or pass --skip-bad to write the others).")
        loaded = write(records, args.output)
    except (OSError, ValueError) as e:
        sys.exit(str(e))
    print(f"wrote {args.output}: {len(loaded)} dialogues ({sum(r['kind'] == 'nqna' for r in loaded)} nQnA, "
          f"{sum(len(r['answers']) for r in loaded)} answers){f', skipped {len(errors)} rows' if errors else ''}")
    if other_system:
        print(f"note: {other_system} rows carry a system prompt other than mmduet2.dialogue.SYSTEM_PROMPT, which "
              "training uses for every dialogue.")


if __name__ == "__main__":
    main()
