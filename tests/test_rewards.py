"""The RL reward against the worked example of docs/method.md section 3.4 and one hand-computed case per term."""
import pytest

from mmduet2.rewards import RewardConfig, proactive_reward, r_out, r_pauc, r_pfx, r_rep

N = "NO REPLY"
A = "The young blonde woman is seemingly involved in a conversation or video call."
B = "The woman is brushing her teeth with a toothbrush."
C = "The woman is brushing her teeth with a toothbrush, and holding a toothpaste."
CONTEXT = ["The woman is brushing her teeth with toothbrush."]
TURNS = list(zip(range(1, 9), [N, A, N, N, B, C, N, N]))
ANSWERS = [{"content": "gold 1", "reply_timespan": [1, 3], "question": "What happens?"},
           {"content": "gold 2", "reply_timespan": [3, 9], "question": "What happens?"}]


class Judge:
    """Dict-backed judge keyed by the reply (argument `key`: last for the similarity judge (question, gold, reply),
    second for the repetition judge (previous, reply, question)); records calls."""

    def __init__(self, table, key=-1):
        self.table, self.calls, self.key = table, [], key

    def __call__(self, *args):
        self.calls.append(args)
        return self.table[args[self.key]]


def Rep(table):
    return Judge(table, key=1)


def test_method_worked_example():
    sim, rep = Judge({A: 4, B: 3, C: 4}), Rep({A: False, B: True, C: False})
    total, comps = proactive_reward(TURNS, ANSWERS, CONTEXT, sim, rep)
    assert comps["r_pauc"] == pytest.approx((0.78125 + 20 / 24) / 2)
    assert comps["r_pauc"] == pytest.approx(0.807292, abs=1e-6)
    assert comps["r_rep"] == pytest.approx(-0.25)
    assert comps["r_out"] == 0.0 and comps["r_pfx"] == 0.0
    assert total == pytest.approx(1.921875)
    # the repetition judge saw everything seen so far, joined by single spaces
    assert rep.calls == [(CONTEXT[0], A, None), (CONTEXT[0] + " " + A, B, None), (" ".join([CONTEXT[0], A, B]), C, None)]
    # the released recount rule gives the same here (no exact repeat inside a span)
    _, old = proactive_reward(TURNS, ANSWERS, CONTEXT, Judge({A: 4, B: 3, C: 4}), Rep({A: False, B: True, C: False}),
                              RewardConfig(recount_repeats=False))
    assert old["r_rep"] == pytest.approx(-0.25)
    assert sim.calls == [("What happens?", "gold 1", A), ("What happens?", "gold 2", B), ("What happens?", "gold 2", C)]
    # shuffled turns are put back in time order
    total2, _ = proactive_reward(TURNS[::-1], ANSWERS, CONTEXT, Judge({A: 4, B: 3, C: 4}),
                                 Rep({A: False, B: True, C: False}))
    assert total2 == pytest.approx(total)


def test_weights_and_config():
    sim, rep = Judge({A: 4, B: 3, C: 4}), Rep({A: False, B: True, C: False})
    total, comps = proactive_reward(TURNS, ANSWERS, CONTEXT, sim, rep, RewardConfig(w_pauc=1, w_rep=0))
    assert total == pytest.approx(comps["r_pauc"])
    with pytest.raises(ValueError, match="out_mode"):
        RewardConfig(out_mode="paper")
    with pytest.raises(ValueError, match="answer 0 lacks"):
        proactive_reward(TURNS, [{"content": "x", "reply_timespan": [1, 2]}], [], sim, rep)
    assert proactive_reward([], ANSWERS, CONTEXT, sim, rep) == (0.0, {"r_pauc": 0.0, "r_rep": 0.0, "r_out": 0.0,
                                                                      "r_pfx": 0.0})


def test_r_pauc_rules():
    answers = [{"content": "g", "reply_timespan": [0, 4], "question": "q"},
               {"content": "late", "reply_timespan": [9, 12], "question": "q"}]   # starts after the last turn
    # silent span -> 0.125; the late span is skipped, not averaged in
    assert r_pauc([(2, N), (4, N), (6, N)], answers, Judge({})) == 0.125
    # the exact repeat at t=3 and NO REPLY are not judged; a failed judgement adds no point
    sim = Judge({"a": 4, "b": None})
    value = r_pauc([(1, "a"), (2, N), (3, "a"), (4, "b")], answers[:1], sim)
    assert [c[-1] for c in sim.calls] == ["a", "b"]
    assert value == pytest.approx((0.5 * 0.5 + 3.5 * 4) / 16)   # x = 0.5*1; only point (1, 4)
    # a turn inside two overlapping spans is judged against each span's own gold answer
    sim = Judge({"a": 2})
    r_pauc([(2, "a")], [{"content": "g1", "reply_timespan": [0, 2], "question": "q"},
                        {"content": "g2", "reply_timespan": [2, 4], "question": "q"}], sim)
    assert [c[1] for c in sim.calls] == ["g1", "g2"]
    assert r_pauc([(1, N)], [], Judge({})) == 0.0


def test_r_rep_rules():
    spans = [{"content": "g", "reply_timespan": [0, 10], "question": "q"}]
    # walk: "ctx" repeats a context reply exactly -> 1 (not asked); "x" judged 0; "y" judged 1; the second "y" is
    # an exact repeat -> 1. Inside the span every reply after the first counts again: x (0), y (1), y (1):
    # counts [1, 0, 1, 1, 0, 1, 1] -> -5/7. The released rule recounts distinct replies only (not the second y):
    # -4/6.
    turns = [(1, "ctx"), (2, "x"), (3, "y"), (4, "y"), (5, N)]
    rep = Rep({"x": False, "y": True})
    assert r_rep(turns, spans, ["ctx"], rep) == pytest.approx(-5 / 7)
    assert rep.calls == [("ctx", "x", None), ("ctx x", "y", None)]
    assert r_rep(turns, spans, ["ctx"], rep, recount_repeats=False) == pytest.approx(-4 / 6)
    # a paraphrase judged a repeat costs what the exact repeat costs
    exact = r_rep([(1, "a"), (2, "a")], spans, [], Rep({"a": False}))
    para = r_rep([(1, "a"), (2, "a!")], spans, [], Rep({"a": False, "a!": True}))
    assert exact == para == pytest.approx(-2 / 3)
    assert r_rep([(1, "a"), (2, "a!")], spans, [], Rep({"a": False, "a!": True}), recount_repeats=False) == \
        pytest.approx(-2 / 3)
    assert r_rep([(1, "a"), (2, "a")], spans, [], Rep({"a": False}), recount_repeats=False) == pytest.approx(-1 / 2)
    # the judge gets the question in force at the reply's time
    rep = Rep({"x": False, "y": False})
    r_rep([(2, "x"), (6, "y")], spans, [], rep, questions=[(0, "q0"), (5, "q1")])
    assert [c[2] for c in rep.calls] == ["q0", "q1"]
    # a failed judgement counts nothing (not even the within-span extra); no replies at all -> 0
    assert r_rep([(1, "x"), (2, "y")], spans, [], Rep({"x": False, "y": None})) == 0.0
    assert r_rep([(1, N)], spans, ["ctx"], Rep({})) == 0.0
    # outside every span there is no extra count; with no context the first judge call sees ""
    rep = Rep({"x": False, "y": True})
    assert r_rep([(1, "x"), (2, "y")], [], [], rep) == pytest.approx(-0.5)
    assert rep.calls[0] == ("", "x", None)


def test_r_out_modes():
    turns = TURNS + [(10, "late talk"), (11, N)]
    assert r_out(TURNS, ANSWERS) == 0.0                                  # no turn outside
    assert r_out(turns, ANSWERS) == pytest.approx(-1 / 2)                # t=10, 11 outside, one talks
    assert r_out(turns, ANSWERS, mode="replies") == pytest.approx(-1 / 4)  # A, B, C, late talk
    assert r_out([(10, N)], ANSWERS, mode="replies") == 0.0
    assert r_out([(10, "x"), (11, "y")], [], mode="turns") == -1.0


def test_r_pfx_boundary():
    p49 = B[:-1]                      # "The woman is brushing her teeth with a toothbrush" (49 chars)
    assert len(p49) == 49
    assert r_pfx(TURNS, CONTEXT) == 0.0                            # B/C share exactly 49 characters
    assert r_pfx(TURNS, CONTEXT, prefix_chars=49) == pytest.approx(-1 / 8)
    copy = B + " Again."                                            # shares 50 with B
    assert r_pfx([(1, B), (2, N), (3, copy), (4, N)], []) == pytest.approx(-1 / 4)
    assert r_pfx([(1, copy)], [B]) == -1.0                          # a context reply counts as earlier
    # NO REPLY turns never count, even with a threshold below their length
    assert r_pfx([(1, N), (2, N)], [], prefix_chars=3) == 0.0


def test_turn_penalties():
    """-1 on a turn that repeats (exactly or by the judge) or speaks outside every span; the rollout of
    docs/method.md section 3.4."""
    from mmduet2.rewards import turn_penalties
    assert turn_penalties(TURNS, ANSWERS, CONTEXT, Rep({A: False, B: True, C: False})) == [0, 0, 0, 0, -1, 0, 0, 0]
    turns = TURNS + [(10, "late talk"), (11, N), (12, A)]
    pens = turn_penalties(turns, ANSWERS, CONTEXT, Rep({A: False, B: False, C: False, "late talk": False}))
    assert pens == [0, 0, 0, 0, 0, 0, 0, 0, -1, 0, -1]     # t10 outside; t12 outside and an exact repeat of A
