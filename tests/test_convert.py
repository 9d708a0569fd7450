"""convert.py against hand-written rows with the released field lists (ms-swift SFT rows; verl RL rows and their
user-turn file, as rl/verl reads them): the records load, build_turns lays an SFT row out again turn for turn,
the frames the loader reads are the listed ones at their times, and each malformed row is one sentence."""
import copy
import json
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

import convert
from mmduet2.data import build_turns, load_dialogues
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT
from mmduet2.video import read_frames

QID = "d0zI4QDJNA0.63.mp4"
Q_RL = "What is the woman doing?"


def make_frames(folder, n, start=0):
    """Tiny png files 000000.png ..., file i filled with the value i (so a frame read back names its file)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(os.path.join(folder, f"{i:06d}.png"))


def frame_ids(video, interval, fps, n):
    """Which files the loader shows as the first n frames, and at what times."""
    frames, times = read_frames(video, interval, fps, max_frames=n)
    return [int(f[0, 0, 0]) for f in frames], times


def sft_row(frames="frames/v1"):
    """2 s per frame, 2 frames per turn; file i of the folder is the picture at i * 2 s, so frame k is file k."""
    user = lambda k, text="": {"role": "user", "content": "<image><image>" + text}  # noqa: E731
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         user(1, "What is the man doing?"), {"role": "assistant", "content": NO_REPLY},
                         user(2), {"role": "assistant", "content": "He picks up a cup."},
                         user(3, "And what is on the table?"),
                         {"role": "assistant", "content": "A red cup and a plate."},
                         user(4), {"role": "assistant", "content": NO_REPLY}],
            "images": [f"{frames}/{k:06d}.png" for k in range(1, 9)],
            "metadata": {"question_id": "q1", "video_id": "v1"}}


def rl_row():
    """1 s per frame, 2 frames per turn; the prompt is two context turns and the episode's first turn (t = 6)."""
    return {"data_source": "proactive", "ability": "proactive",
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT, "last_image_time": 0},
                       {"role": "user", "content": "<image><image>" + Q_RL, "last_image_time": 2},
                       {"role": "assistant", "content": NO_REPLY, "last_image_time": 2},
                       {"role": "user", "content": "<image><image>", "last_image_time": 4},
                       {"role": "assistant", "content": "The woman is talking on the phone.", "last_image_time": 4},
                       {"role": "user", "content": "<image><image>", "last_image_time": 6}],
            "images": [{"type": "image", "image": f"frames/v2/{k:06d}.png"} for k in range(1, 7)],
            "reward_model": {"style": "rule", "ground_truth": {
                "answer": [{"content": "The woman is talking on the phone.", "question": Q_RL,
                            "reply_timespan": [3, 5]},
                           {"content": "She brushes her teeth.", "question": Q_RL, "reply_timespan": [7, 11]},
                           {"content": "She leaves.", "question": Q_RL, "reply_timespan": [30, 32]}],
                "model_pred_timestamps": [6, 8, 10, 12], "question_id": QID,
                "prev_assistant_replies": ["The woman is talking on the phone."]}},
            "extra_info": {"index": 0, "num_images": 6,
                           "tools_kwargs": {"online_video_provider": {"execute_kwargs": {"question_id": QID}}}}}


def user_turns():
    """The episode's user turns as online_video_provider reads them: indexed by the user turns so far."""
    img = lambda k: {"type": "image", "image": f"frames/v2/{k:06d}.png"}  # noqa: E731
    return {QID: [{"content": [img(1), img(2), {"type": "text", "text": Q_RL}]}, {"content": [img(3), img(4)]},
                  {"content": [img(5), img(6)]}, {"content": [img(7), img(8)]},
                  {"content": [img(9), img(10), {"type": "text", "text": "Is she done?"}]},
                  {"content": [img(11), img(12)]}]}


def write_rows(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def opts(tmp_path, **kw):
    return convert.argparse.Namespace(**{"frame_interval": None, "fps": None, "link_frames": None,
                                         "root": str(tmp_path), "user_turns": None, **kw})


@pytest.fixture
def data(tmp_path):
    make_frames(tmp_path / "frames" / "v1", 9)    # pictures at 0, 2, ..., 16 s
    make_frames(tmp_path / "frames" / "v2", 31)   # pictures at 0, 1, ..., 30 s
    return tmp_path


def test_ms_swift_row_becomes_the_same_dialogue(data):
    src = write_rows(data / "sft.jsonl", [sft_row()])
    out = str(data / "out" / "train.jsonl")
    convert.main(["ms-swift", src, out, "--frame-interval", "2"])
    [rec] = load_dialogues(out)
    assert rec["id"] == "q1" and rec["kind"] == "nqna" and rec["duration"] == 16 and rec["frame_interval"] == 2
    assert os.path.normpath(rec["video"]) == str(data / "frames" / "v1") and rec["fps"] == 0.5
    assert rec["questions"] == [{"time": 0.0, "text": "What is the man doing?"},
                                {"time": 12.0, "text": "And what is on the table?"}]
    assert rec["answers"] == [
        {"question": 0, "content": "He picks up a cup.", "related_timespan": [4, 8], "reply_timespan": [4, 8]},
        {"question": 1, "content": "A red cup and a plate.", "related_timespan": [8, 12], "reply_timespan": [8, 12],
         "immediate": True}]
    turns = build_turns(rec, frames_per_turn=2)  # the SFT layout gives back the row's turns
    assert [(t.time, t.user_text, t.reply) for t in turns] == [
        (4.0, "What is the man doing?", NO_REPLY), (8.0, None, "He picks up a cup."),
        (12.0, "And what is on the table?", "A red cup and a plate."), (16.0, None, NO_REPLY)]
    assert frame_ids(rec["video"], 2, rec["fps"], 8) == (list(range(1, 9)), [2.0 * k for k in range(1, 9)])


def test_ms_swift_frames_of_their_own_folder_need_links(data, tmp_path):
    make_frames(data / "frames" / "own", 8, start=1)  # exactly the listed frames: the first file is frame 1
    src = write_rows(data / "sft.jsonl", [sft_row("frames/own")])
    records, errors, _ = convert.convert("ms-swift", src, opts(data, frame_interval=2))
    assert not records and errors == [f"{src} row 1: images[0] must be the file {data / 'frames' / 'own'} shows at "
                                      "2 s (at --fps 0.5: 000002.png), not 000001.png; pass the folder's --fps, or "
                                      "--link-frames DIR to make a folder of exactly the listed frames; fix or drop "
                                      "the row."]
    records, errors, _ = convert.convert("ms-swift", src, opts(data, frame_interval=2, link_frames=str(data / "links")))
    assert not errors and records[0]["video"] == str(data / "links" / "q1")
    assert frame_ids(records[0]["video"], 2, records[0]["fps"], 8)[0] == list(range(1, 9))
    convert.convert("ms-swift", src, opts(data, frame_interval=2, link_frames=str(data / "links")))  # relinks


def test_verl_row(data):
    src = write_rows(data / "rl.jsonl", [rl_row()])
    records, errors, other = convert.convert("verl", src, opts(data))
    assert not errors and not other
    [rec] = records
    assert rec["id"] == QID and rec["duration"] == 12 and rec["frame_interval"] == 1 and rec["fps"] == 1
    assert rec["questions"] == [{"time": 0.0, "text": Q_RL}] and rec["kind"] == "1qna"
    # gold spans kept; the context reply is the first gold answer, not a second one; the span after 12 s is dropped
    assert rec["answers"] == [
        {"question": 0, "content": "The woman is talking on the phone.", "related_timespan": [3, 5],
         "reply_timespan": [3, 5]},
        {"question": 0, "content": "She brushes her teeth.", "related_timespan": [7, 11], "reply_timespan": [7, 11]}]
    out = convert.write(records, str(data / "out.jsonl"))
    assert frame_ids(out[0]["video"], 1, out[0]["fps"], 12) == (list(range(1, 13)), [float(k) for k in range(1, 13)])
    turns = build_turns(out[0], frames_per_turn=2)
    assert [t.reply for t in turns][:3] == [NO_REPLY, "The woman is talking on the phone.", NO_REPLY]


def test_verl_row_with_user_turns(data):
    row = rl_row()
    row["reward_model"]["ground_truth"]["answer"][1:] = [
        {"content": "Not yet.", "question": "Is she done?", "reply_timespan": [10, 12]}]
    src = write_rows(data / "rl.jsonl", [row])
    records, errors, _ = convert.convert("verl", src, opts(data, user_turns=user_turns(),
                                                            link_frames=str(data / "links")))
    assert not errors
    [rec] = records
    assert rec["questions"] == [{"time": 0.0, "text": Q_RL}, {"time": 10.0, "text": "Is she done?"}]
    assert rec["answers"][-1] == {"question": 1, "content": "Not yet.", "related_timespan": [10, 12],
                                  "reply_timespan": [10, 12]}
    assert frame_ids(rec["video"], 1, rec["fps"], 12)[0] == list(range(1, 13))
    assert len(convert.write(records, str(data / "out.jsonl"))) == 1
    # without the user turns, a question asked after the prompt cannot be placed
    records, errors, _ = convert.convert("verl", src, opts(data))
    assert errors == [f"{src} row 1: reward_model.ground_truth.answer[1].question must be the text of a question the "
                      "row asks (in the prompt, or in the later turns that --user-turns adds), not 'Is she done?'; "
                      "fix or drop the row."]


def test_verl_parquet(data, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    src = str(data / "rl.parquet")
    pq.write_table(pa.Table.from_pylist([rl_row()]), src)
    records, errors, _ = convert.convert("verl", src, opts(data))
    assert not errors
    assert records[0]["answers"] == convert.convert("verl", write_rows(data / "rl.jsonl", [rl_row()]),
                                                    opts(data))[0][0]["answers"]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match=re.escape(f"{src} is a parquet file, which needs pyarrow: pip install")):
        convert.read_rows(src)


def _del(*keys):
    def edit(row):
        obj = row
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return edit


def _set(value, *keys):
    def edit(row):
        obj = row
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


SFT_CASES = [
    (_del("messages"), "messages must be present"),
    (_set("What is he doing?", "messages", 1, "content"), "messages[1].content must be a string with one \"<image>\""),
    (_set("<video>What?", "messages", 1, "content"), "messages[1].content must be frames as \"<image>\" placeholders"),
    (_set("user", "messages", 2, "role"), 'messages[2].role must be "assistant"'),
    (lambda r: r["messages"].pop(), "messages must be a chat that ends with the assistant's reply to messages[7]"),
    (lambda r: r["images"].pop(), "images must be one frame path per \"<image>\" in messages (8), not 7"),
    (_set("frames/v1/000001.webp", "images", 0), "images[0] must be a .jpg, .jpeg or .png frame"),
    (_set("frames/v2/000001.png", "images", 0), "images must be frames of one folder, not of 2"),
    (_set("<image><image>", "messages", 1, "content"), "messages[1] must be a user turn with the question after"),
    (_set([1], "metadata"), "metadata must be an object"),
]
RL_CASES = [
    (_del("reward_model"), "reward_model must be present"),
    (_set(5, "prompt", 3, "last_image_time"), "prompt[3].last_image_time must be 4 frames x 1 s = 4 s"),
    (_set([7, 8], "reward_model", "ground_truth", "model_pred_timestamps"),
     "reward_model.ground_truth.model_pred_timestamps[0] must be 6 s, the time of the episode's turn 0"),
    (_set([6, 8.5], "reward_model", "ground_truth", "model_pred_timestamps"),
     "reward_model.ground_truth.model_pred_timestamps[1] must be a multiple of the frame interval 1 s"),
    (_set([6, "8"], "reward_model", "ground_truth", "model_pred_timestamps"),
     "reward_model.ground_truth.model_pred_timestamps[1] must be a finite number"),
    (_set("What is the man doing?", "reward_model", "ground_truth", "answer", 1, "question"),
     "reward_model.ground_truth.answer[1].question must be the text of a question the row asks"),
    (_set([5, 3], "reward_model", "ground_truth", "answer", 0, "reply_timespan"),
     "reward_model.ground_truth.answer[0].reply_timespan must be [start, end] with 0 <= start <= end"),
    (_del("reward_model", "ground_truth", "question_id"), "reward_model.ground_truth.question_id must be present"),
    (lambda r: r["prompt"].append({"role": "assistant", "content": NO_REPLY}),
     "prompt must be a chat that ends with a user turn"),
    (lambda r: r["images"].append({"type": "image", "image": "frames/v2/000007.png"}),
     "images must be one frame per \"<image>\" in prompt (6), not 7"),
]


@pytest.mark.parametrize("edit, message", SFT_CASES + RL_CASES)
def test_each_malformed_row_is_one_sentence(data, edit, message):
    fmt = "ms-swift" if (edit, message) in SFT_CASES else "verl"
    good, bad = (sft_row(), copy.deepcopy(sft_row())) if fmt == "ms-swift" else (rl_row(), copy.deepcopy(rl_row()))
    edit(bad)
    src = write_rows(data / "in.jsonl", [good, bad, good])
    records, errors, _ = convert.convert(fmt, src, opts(data, frame_interval=2 if fmt == "ms-swift" else None))
    assert len(records) == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"{src} row 2: {message}") and errors[0].endswith("; fix or drop the row.")
    assert "\n" not in errors[0] and records[1]["id"].endswith("@row3")  # a repeated id is made unique


def test_cli_writes_nothing_when_a_row_is_malformed(data, capsys):
    src = write_rows(data / "sft.jsonl", [sft_row(), "not a row"])
    with open(src, "a") as f:
        f.write("{not json\n")
    out = str(data / "train.jsonl")
    with pytest.raises(SystemExit, match=re.escape(f"2 of 3 rows of {src} do not convert; nothing was written")):
        convert.main(["ms-swift", src, out, "--frame-interval", "2"])
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{src} row 2: the row must be a JSON object with \"messages\" and \"images\"; fix or drop the row.",
                   f"{src} row 3: the row must be valid JSON (Expecting property name enclosed in double quotes); "
                   "fix or drop the row."]
    assert not os.path.exists(out)
    convert.main(["ms-swift", src, out, "--frame-interval", "2", "--skip-bad"])
    assert len(load_dialogues(out)) == 1
    with pytest.raises(SystemExit):
        convert.main(["ms-swift", src, out])  # ms-swift rows carry no times


def test_verl_frames_at_the_wrong_fps(data):
    src = write_rows(data / "rl.jsonl", [rl_row()])
    assert convert.convert("verl", src, opts(data, fps=2))[1] == [
        f"{src} row 1: images[0] must be the file {data / 'frames' / 'v2'} shows at 1 s (at --fps 2: 000002.png), not "
        "000001.png; pass the folder's --fps, or --link-frames DIR to make a folder of exactly the listed frames; fix "
        "or drop the row."]
    assert convert.convert("verl", src, opts(data, frame_interval=2))[1][0].startswith(
        f"{src} row 1: prompt[1].last_image_time must be 2 frames x 2 s = 4 s")
