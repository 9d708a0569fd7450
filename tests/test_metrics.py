"""PAUC against hand-computed values (the check values of docs/method.md section 4, and a small benchmark worked
out by hand)."""
import pytest

from mmduet2.metrics import pauc_area, proactive_pauc, prune_extra_second
from shapewatch import RuleJudge


@pytest.mark.parametrize("omega, expected", [(0.0, 0.70), (0.5, 0.85), (1.0, 1.00)])
def test_pauc_area_method_check_values(omega, expected):
    # span of 10 s, replies at +2 s (score 1) and +5 s (score 2), S = 2
    assert pauc_area([(2, 1), (5, 2)], 0, 10, 2, omega) == pytest.approx(expected)
    # absolute times: the same span shifted by 30 s, points given out of order
    assert pauc_area([(35, 2), (32, 1)], 30, 40, 2, omega) == pytest.approx(expected)


def test_pauc_area_edge_cases():
    assert pauc_area([], 0, 10, 2, 0.5) == 0.25           # said nothing: 0.5 / S
    assert pauc_area([], 0, 10, 4, 0.5) == 0.125
    assert pauc_area([], 3, 3, 2, 0.5) == 0.25            # no points beats L = 0
    assert pauc_area([(3, 2)], 3, 3, 2, 0.5) == 0.0       # L = 0 with points
    assert pauc_area([(0, 0)], 0, 10, 2, 0.0) == 0.0      # an immediate wrong answer
    assert pauc_area([(10, 2)], 0, 10, 2, 0.0) == pytest.approx(0.25)  # a right answer at the very end, omega 0
    assert pauc_area([(1, 2)], 0, 4, 2, 0.5, start_score=0.0) == pytest.approx((3.5 * 2) / 8)


def test_prune_extra_second():
    assert prune_extra_second([(6, 2), (9, 1)], 8) == [(6, 2)]
    assert prune_extra_second([(6, 1), (9, 1), (9.5, 2)], 8) == [(6, 1), (9, 1), (9.5, 2)]  # not below: kept
    assert prune_extra_second([(9, 0)], 8) == [(9, 0)]                  # one point: nothing to compare with
    assert prune_extra_second([(8.5, 0), (9, 2)], 8) == [(8.5, 0), (9, 2)]  # nothing at/before related_end
    assert prune_extra_second([(6, 2), (8, 0), (9, 1)], 8) == [(6, 2), (8, 0), (9, 1)]  # remembers the LAST (0)


class RecordingJudge:
    """A dict-backed judge that records every call (to check what is judged, and how often)."""

    def __init__(self, scores):
        self.scores, self.calls = scores, []

    def __call__(self, question, gold, text):
        self.calls.append((question, gold, text))
        return self.scores[text]


def _records():
    def ans(text, related, reply):
        return {"role": "assistant", "content": text, "related_timespan": related, "reply_timespan": reply}
    return [
        {"video": "a.mp4", "question_id": "a", "duration": 20,
         "conversation": [{"role": "user", "content": "Q?", "time": 0}],
         "answer": [ans("g0", [0, 9], [0, 10]), ans("g1", [12, 15], [12, 16])]},
        {"video": "b.mp4", "question_id": "b", "duration": 5,
         "conversation": [{"role": "user", "content": "Qb?", "time": 0}], "answer": [ans("gb", [1, 3], [1, 4])]},
        {"video": "c.mp4", "question_id": "c", "duration": 5,
         "conversation": [{"role": "user", "content": "Qc?", "time": 0}], "answer": [ans("gc", [0, 3], [0, 4])]},
    ]


PREDICTIONS = {
    "a": [{"time": 7, "content": "x"}, {"time": 2, "content": "x"}, {"time": 5, "content": "y"},  # unsorted
          {"time": 11, "content": "between"}, {"time": 14, "content": "z"}, {"time": 16, "content": "w"}],
    "c": [{"time": 2, "content": "fail"}, {"time": 3, "content": "NO REPLY"}],
    "unknown": [{"time": 1, "content": "ignored"}],
}
SCORES = {"x": 1, "x y": 2, "z": 2, "z w": 1, "fail": None}


def test_proactive_pauc_hand_computed():
    judge = RecordingJudge(SCORES)
    res = proactive_pauc(_records(), PREDICTIONS, judge, omega=0.5)
    # a/0: accumulated "x" -> 1 at 2 s, "x y" -> 2 at 5 s, the repeated "x" at 7 s adds nothing: 0.85, the check
    #      value of docs/method.md section 4.
    # a/1: "z" -> 2 at 14 s; "z w" -> 1 at 16 s lies after related_end 15 and below 2: pruned.
    #      omega .5: x = 1, area = 0.5*1 + 3*2 = 6.5 -> 6.5/8; omega 0: 1 + 2*2 = 5 -> 5/8; omega 1 -> 1.
    # b/0: no predictions -> 0.25. c/0: the only judgement fails, NO REPLY is silence -> 0.25.
    per_turn = [0.85, 6.5 / 8, 0.25, 0.25]
    assert [(t["question_id"], t["turn"]) for t in res["turns"]] == [("a", 0), ("a", 1), ("b", 0), ("c", 0)]
    assert [t["pauc"] for t in res["turns"]] == pytest.approx(per_turn)
    assert res["pauc"] == pytest.approx(100 * sum(per_turn) / 4)
    assert res["pauc_omega0"] == pytest.approx(100 * (0.70 + 5 / 8 + 0.25 + 0.25) / 4)
    assert res["pauc_omega1"] == pytest.approx(100 * (1.0 + 1.0 + 0.25 + 0.25) / 4)
    assert res["turns"][1]["points"] == [(14, 2)]
    # each accumulated text judged exactly once although three omegas are computed
    assert sorted(c[2] for c in judge.calls) == ["fail", "x", "x y", "z", "z w"]
    assert ("Q?", "g1", "z w") in judge.calls and ("Qc?", "gc", "fail") in judge.calls
    assert res["judge_failures"] == 1
    # pooled: a/0 has 3 replies (1 duplicate), a/1 has 2 (0), c/0 has 1 -> 1 / (2 + 1 + 0) (per-turn mean: 0.25)
    assert res["duplicate_ratio"] == pytest.approx(1 / 3)
    assert res["n_turns"] == 4


def test_proactive_pauc_omega_argument_and_batch_judge():
    class BatchJudge(RecordingJudge):
        batches = []

        def map(self, requests):
            self.batches.append(list(requests))
            return [self.scores[r[2]] for r in requests]

    judge = BatchJudge(SCORES)
    res = proactive_pauc(_records(), PREDICTIONS, judge, omega=0.0)
    assert res["pauc"] == pytest.approx(res["pauc_omega0"])
    assert len(judge.batches) == 1 and len(judge.batches[0]) == 5 and not judge.calls


def test_proactive_pauc_edge_cases():
    assert proactive_pauc([], {}, RecordingJudge({}))["pauc"] == 0.0
    bad = dict(_records()[1], conversation=[])
    with pytest.raises(ValueError, match="no user turn"):
        proactive_pauc([bad], {}, RecordingJudge({}))
    # the same text as two separate examples' replies is judged per (question, gold, text)
    recs = _records()[1:]
    preds = {"b": [{"time": 2, "content": "t"}], "c": [{"time": 2, "content": "t"}]}
    judge = RecordingJudge({"t": 2})
    res = proactive_pauc(recs, preds, judge)
    assert len(judge.calls) == 2 and res["duplicate_ratio"] == 0.0


def test_span_turn_report_on_hand_made_turns():
    """bench/span_turns.py's bookkeeping: patterns per span, missed spans and the kinds of turns."""
    from bench.span_turns import span_report
    rec = {"question_id": "q", "answer": [{"reply_timespan": [3, 9]}, {"reply_timespan": [13, 17]},
                                          {"reply_timespan": [18, 19]}]}
    turns = [(4, None, 0.9), (8, "A red circle appeared.", 0.2),           # span 1: `.R`
             (12, "A blue square appeared.", 0.3),                          # outside, just before span 2
             (16, None, 0.8),                                               # span 2: `.`, missed; span 3 holds no turn
             (20, "A red square appeared.", 0.4)]                           # outside, just after span 3
    patterns, missed, kinds = span_report([rec], {"q": turns})
    assert patterns == {(2, ".R"): 1, (1, "."): 1, (0, ""): 1}
    assert missed == {"both": 1, "turn after": 1}     # span 2: replies at 12 and 20; span 3: at 20 only
    assert kinds["first turn"] == [(0.9, True), (0.8, True)] and kinds["later, no reply yet"] == [(0.2, False)]
    assert kinds["outside every span"] == [(0.3, False), (0.4, False)] and not kinds["later, after a reply"]


def test_timing_headroom_on_hand_made_turns():
    """bench/span_turns.py: the late reply moved to the span's first turn scores what the gold there scores."""
    from bench.span_turns import timing_headroom
    rec = {"question_id": "q", "conversation": [{"role": "user", "content": "Tell me every time a red shape appears.",
                                                 "time": 0.0}],
           "answer": [{"content": "A red circle appeared.", "related_timespan": [3, 8], "reply_timespan": [3, 9]},
                      {"content": "A red square appeared.", "related_timespan": [13, 14], "reply_timespan": [13, 15]}]}
    turns = [(4, None, 0.9), (8, "A red circle appeared.", 0.2), (12, None, 0.9), (16, None, 0.9)]
    # span 1 (L = 6, S = 2): a right reply at 8 s gives x = 2.5, area 0.5 * 2.5 + 3.5 * 2 = 8.25 -> 0.6875;
    # at 4 s x = 0.5, area 11.25 -> 0.9375. Span 2 holds no turn: 0.25 in every row.
    got = timing_headroom([rec], {"q": turns}, RuleJudge())
    late, early = 100 * (0.6875 + 0.25) / 2, 100 * (0.9375 + 0.25) / 2
    assert got == pytest.approx({"streamed": late, "moved to first turn": early, "gold on first turn": early,
                                 "gold on last turn": late})
