"""Rule judge on hand-made ShapeWatch replies; LLM judge against a tiny OpenAI-like server on 127.0.0.1."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmduet2.judges import (BENCHMARK_RUBRIC, REPETITION_PROMPT, REWARD_RUBRIC, JudgeError, LLMJudge, judge_many,
                            parse_score, parse_yes_no)
from mmduet2.metrics import proactive_pauc
from shapewatch import VOCAB, RuleJudge, parse_objects, rule_repetition_judge


# ---- rule judge ------------------------------------------------------------------------------------------

def test_vocab_and_parse_objects():
    assert VOCAB == {"colours": ["red", "green", "blue", "yellow"], "shapes": ["circle", "square", "triangle"]}
    assert parse_objects("A red circle and a Blue square appeared.") == [("red", "circle"), ("blue", "square")]
    assert parse_objects("Something green, then triangles.") == [("green", "triangle")]
    assert parse_objects("A yellow one. A circle.") == [("yellow", "circle")]
    assert parse_objects("A red and a blue thing; a square") == [("red", None), ("blue", "square")]
    assert parse_objects("Nothing yet.") == [] and parse_objects("NO REPLY") == []
    # the toy's negative immediate answers name nothing; any other "no" is no word, so a policy cannot hide an
    # object behind one (r_rep's judge reads earlier replies joined by spaces: "... No" + "Red circle ...")
    assert parse_objects("No red shape yet.") == [] and parse_objects("no CIRCLES yet!") == []
    assert parse_objects("No, a red circle appeared.") == [("red", "circle")]
    joined = "Blue square appeared. No " + "Red circle appeared."
    assert parse_objects(joined) == [("blue", "square"), ("red", "circle")]
    assert parse_objects("No red circle yet.") == [("red", "circle")]     # not the toy's wording: an object


@pytest.mark.parametrize("reply, s2, s4", [
    ("A red circle appeared.", 2, 4), ("a RED CIRCLE!", 2, 4),
    ("A red square appeared.", 1, 2), ("Something red.", 1, 2),
    ("A blue circle appeared.", 0, 2),  # blue contradicts the question (red shapes); "q" asks about nothing
    ("A blue square appeared.", 0, 0), ("Nothing yet.", 0, 0),
    ("A blue square and a red circle appeared.", 2, 2),   # blue is ignored for red shapes, a wrong claim otherwise
    ("A red circle appeared. A red square appeared.", 2, 3),  # a hedge over shapes: partly right for the reward
    ("A red circle. A red square. A red triangle.", 2, 2),
])
def test_rule_judge_scales(reply, s2, s4):
    gold = "A red circle appeared."
    assert RuleJudge(2)("Tell me every time a red shape appears.", gold, reply) == s2
    assert RuleJudge(max_score=4, precision=True)("q", gold, reply) == s4  # the RL reward's judge


def test_rule_judge_gives_no_credit_for_contradicting_the_question():
    j = RuleJudge(2)
    assert j("Tell me every time a square appears.", "A green square appeared.", "A blue square appeared.") == 1
    assert j("Tell me every time a square appears.", "A green square appeared.", "A green circle appeared.") == 0
    # the reward-hacking reply an RL policy found: the same wrong object for every question
    assert j("Tell me every time a red shape appears.", "A red square appeared.",
             "A blue square appearedA blue square is visibleNO REPLY") == 0


def test_rule_judge_special_golds():
    j = RuleJudge(2)
    assert j("q", "Nothing yet.", "Nothing is visible yet.") == 2
    assert j("q", "Nothing yet.", "A red circle is visible.") == 0
    # two gold objects: (2 + 0) // 2 for naming one of them right
    assert j("q", "A red circle and a blue square are visible.", "A red circle is visible.") == 1
    assert j("q", "A red circle and a blue square are visible.", "A blue square and a red circle.") == 2


def test_rule_repetition_judge():
    prev = "A red circle appeared. A blue square appeared."
    assert rule_repetition_judge(prev, "The red circle is still there.") is True
    assert rule_repetition_judge(prev, "A circle.") is True                 # covered by the red circle
    assert rule_repetition_judge(prev, "A red square appeared.") is False   # a new pair
    assert rule_repetition_judge(prev, "A green circle and a red circle.") is False
    assert rule_repetition_judge("", "A red circle appeared.") is False


def test_rule_repetition_judge_reads_the_question():
    red = "Tell me every time a red shape appears."
    prev = "A red circle appeared."
    # a repeat with a stray word is a repeat: "blue" says nothing about red shapes
    assert rule_repetition_judge(prev, "A red circle appeared. A blue", red) is True
    assert rule_repetition_judge(prev, "A red circle appeared. A blue square appeared.", red) is True
    assert rule_repetition_judge(prev, "A red circle appeared. A red square appeared.", red) is False
    # without the question every named object counts
    assert rule_repetition_judge(prev, "A red circle appeared. A blue") is False
    # naming nothing is new the first time, a repeat once the same words were said
    assert rule_repetition_judge("", "Nothing yet.", red) is False
    assert rule_repetition_judge(prev, "Nothing yet.", red) is False
    assert rule_repetition_judge("Nothing yet. " + prev, "Nothing yet.", red) is True
    assert rule_repetition_judge("Nothing yet.", "nothing YET!", red) is True
    # the toy's negative immediate answers name what each question asks, so a second question's is new
    assert rule_repetition_judge("No circle yet. " + prev, "No red shape yet.", red) is False
    assert RuleJudge()(red, "No red shape yet.", "Nothing yet.") == 2
    assert RuleJudge()(red, "No red shape yet.", "Red circle is visible.") == 0
    assert rule_repetition_judge(prev + " No", "Red circle is still here.", red) is True   # no hiding behind "no"


def test_stray_word_repeat_costs_what_an_exact_repeat_costs():
    """In the RL reward with the rule judges, "A red circle appeared. A blue" after "A red circle appeared." in
    the same span is charged exactly like the exact repeat."""
    from mmduet2.rewards import r_rep
    red = "Tell me every time a red shape appears."
    spans = [{"content": "A red circle appeared.", "reply_timespan": [0, 12], "question": red}]
    first = (4, "A red circle appeared.")
    exact = r_rep([first, (8, "A red circle appeared.")], spans, [], rule_repetition_judge, [(0, red)])
    stray = r_rep([first, (8, "A red circle appeared. A blue")], spans, [], rule_repetition_judge, [(0, red)])
    assert exact == stray < 0


# ---- a fake OpenAI-compatible server ----------------------------------------------------------------------

class FakeServer:
    """Answers POST /v1/chat/completions. `script` (a list) gives per-request behaviour, consumed in order:
    an int status, a ("sleep", seconds, content) tuple, a raw bytes body, or a content string; when it is
    empty, `default(user_message)` gives the content."""

    def __init__(self, default=lambda user: "2"):
        self.script, self.default, self.bodies, self.headers = [], default, [], []
        self.lock, self.active, self.max_active = threading.Lock(), 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    step = server.script.pop(0) if server.script else None
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    if isinstance(step, int):
                        self.send_response(step)
                        self.end_headers()
                        self.wfile.write(b'{"error": "boom"}')
                        return
                    if isinstance(step, tuple):
                        time.sleep(step[1])
                        step = step[2]
                    if step is None:
                        step = server.default(body["messages"][-1]["content"])
                    raw = step if isinstance(step, bytes) else json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": step}}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up
                finally:
                    with server.lock:
                        server.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def fast(url, **kw):
    return LLMJudge(url, "judge-model", **{"timeout": 2.0, "retries": 2, "backoff": 0.01, **kw})


@pytest.mark.parametrize("text, lo, hi, want", [
    ("3", 1, 3, 2), ("1", 1, 3, 0), ("Score: 2", 1, 3, 1), (" 2.\n", 1, 3, 1), ("**3**", 1, 3, 2),
    ("I hesitate between 1 and 2; final score: 3", 1, 3, 2),    # the LAST digit on the scale, as the official scorer
    ("<think>It is not a 3.</think>\n\n1", 1, 3, 0),           # digits in a think block do not count
    ("0", 1, 3, None), ("7", 1, 3, None), ("23", 1, 3, None), ("Mostly right.", 1, 3, None), ("", 1, 3, None),
    ("4", 0, 4, 4), ("Rating: 0.", 0, 4, 0), ("5", 0, 4, None), ("3 of 5, so 2", 0, 4, 2),
])
def test_parse_score_reads_the_last_digit_on_the_scale(text, lo, hi, want):
    assert parse_score(text, lo, hi) == want


def test_parse_yes_no():
    assert parse_yes_no("Yes.") is True and parse_yes_no("no") is False and parse_yes_no("**No**") is False
    assert parse_yes_no("Answer: yes") is True and parse_yes_no("<think>no?</think>yes") is True
    assert parse_yes_no("Yes, there is no new information.") is True  # an answer starting with yes/no is that
    assert parse_yes_no("maybe") is None and parse_yes_no("nothing") is None


def test_scores_parsed_and_request_format(server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    llm = fast(server.url, api_key_env="MY_JUDGE_KEY")
    server.script = ["3", "Score: 3", "<think>\n</think>\n\n1", "Yes.", "no"]
    assert llm.reward_score("Q?", "gold", "pred") == 3
    assert llm.benchmark_score("Q?", "gold", "pred2") == 2       # the benchmark's 1..3 read as 0..2
    assert llm.benchmark_score("Q?", "gold", "pred3") == 0
    assert llm.is_repetition("prev", "new") is True
    assert llm.is_repetition("prev", "new2") is False
    first = server.bodies[0]
    assert first["model"] == "judge-model"
    assert first["messages"] == [{"role": "system", "content": REWARD_RUBRIC},
                                 {"role": "user", "content": "Question: Q?\nGround Truth Answer: gold\nPredicted Answer: pred"}]
    assert server.bodies[1]["messages"][0]["content"] == BENCHMARK_RUBRIC
    assert server.bodies[3]["messages"] == [{"role": "system", "content": REPETITION_PROMPT},
                                            {"role": "user", "content": "Previous Turns: prev\nNew Turn: new"}]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert llm.sent == llm.asked == 5 and llm.failures == 0
    assert "- 3: Mostly right" in BENCHMARK_RUBRIC and "- 1: Wrong" in BENCHMARK_RUBRIC
    assert "- 0" not in BENCHMARK_RUBRIC


def test_retries_after_server_errors(server):
    llm = fast(server.url)
    server.script = [500, 503, "4"]
    assert llm.reward_score("q", "g", "p") == 4
    assert len(server.bodies) == 3


def test_client_error_is_not_retried(server):
    server.script = [404]
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*HTTP 404"):
        fast(server.url).reward_score("q", "g", "p")
    assert len(server.bodies) == 1


def test_cache_survives_reruns_and_crashes(server, tmp_path):
    cache = tmp_path / "sub" / "cache.jsonl"
    llm = fast(server.url, cache_path=str(cache))
    assert llm.reward_score("q", "g", "p") == 2
    assert llm.reward_score("q", "g", "p") == 2                     # same object: cache hit
    assert len(server.bodies) == 1 and llm.cache_hits == 1
    rerun = fast(server.url, cache_path=str(cache))                 # a rerun pays nothing twice
    assert rerun.reward_score("q", "g", "p") == 2 and len(server.bodies) == 1
    assert rerun.reward_score("q", "g", "other") == 2 and len(server.bodies) == 2
    # a different model is a different request
    assert LLMJudge(server.url, "other-model", cache_path=str(cache)).reward_score("q", "g", "p") == 2
    assert len(server.bodies) == 3
    # a crash mid-write leaves a partial line: it is skipped on load and the next record starts a fresh line
    with open(cache, "a") as f:
        f.write('{"key": "abc", "cont')
    crashed = fast(server.url, cache_path=str(cache))
    assert crashed.reward_score("q", "g", "p") == 2 and len(server.bodies) == 3
    assert crashed.reward_score("q", "g", "new") == 2 and len(server.bodies) == 4
    again = fast(server.url, cache_path=str(cache))
    assert again.reward_score("q", "g", "new") == 2 and len(server.bodies) == 4


def test_malformed_answers_are_failed_judgements_and_never_cached(server, tmp_path):
    cache = tmp_path / "c.jsonl"
    llm = fast(server.url, cache_path=str(cache))
    server.script = ["The answer is high", "7", "maybe", b"not json", b'{"choices": []}']
    assert llm.reward_score("q", "g", "a") is None
    assert llm.benchmark_score("q", "g", "b") is None              # out of the 1..3 scale
    assert llm.is_repetition("p", "c") is None
    assert llm.reward_score("q", "g", "d") is None                 # a 200 that is not JSON
    assert llm.reward_score("q", "g", "e") is None                 # a 200 without a message
    assert llm.failures == 5 and llm.asked == 5 and not cache.exists()
    # nothing unusable was cached: a later run against a working judge asks again and gets a score
    rerun = fast(server.url, cache_path=str(cache))
    assert rerun.reward_score("q", "g", "a") == 2 and rerun.benchmark_score("q", "g", "b") == 1
    assert len(server.bodies) == 7 and rerun.failures == 0 and len(cache.read_text().splitlines()) == 2
    # a cached answer that no longer parses (an older parser cached it) is asked again, not trusted
    cache.write_text(cache.read_text().replace('"2"', '"Mostly right."'))
    assert fast(server.url, cache_path=str(cache)).reward_score("q", "g", "a") == 2 and len(server.bodies) == 8


def test_failure_rate_check(server):
    llm = fast(server.url, workers=1)  # one in flight: the script's answers come in order
    server.script = ["maybe", "2", "3", "1"]
    assert llm.reward_score.map([("q", "g", str(n)) for n in range(4)]) == [None, 2, 3, 1]
    llm.check_failures(0.25)                                       # 1 of 4 is not more than 25 %
    with pytest.raises(JudgeError, match=r"failed 1 of 4 judgements \(25%, more than the allowed 10%\)"):
        llm.check_failures(0.1)
    fast(server.url).check_failures(0.0)                           # no judgements yet, nothing to judge by


def test_ping_and_timeout(server):
    server.script = ["1"]
    fast(server.url).ping()
    assert server.bodies[-1]["model"] == "judge-model"
    server.script = [b'{"choices": []}']
    with pytest.raises(JudgeError, match="answered without choices"):
        fast(server.url).ping()
    server.script = [404]
    with pytest.raises(JudgeError, match="HTTP 404.*model name"):
        fast(server.url).ping()
    with pytest.raises(ValueError, match="timeout=0 must be a positive"):
        fast(server.url, timeout=0)


def test_progress_lines_while_judging(server, capsys):
    fast(server.url, progress_every=0).reward_score.map([("q", "g", str(n)) for n in range(3)])
    assert capsys.readouterr().err.splitlines() == [f"LLM judge: {n}/3 answers" for n in (1, 2, 3)]
    fast(server.url).reward_score.map([("q", "g", str(n)) for n in range(3, 6)])  # quick: no line before 10 s
    assert capsys.readouterr().err == ""


def test_timeouts_then_error(server):
    server.script = [("sleep", 0.5, "1")] * 3
    llm = fast(server.url, timeout=0.1, retries=2)
    t0 = time.time()
    with pytest.raises(JudgeError, match=r"LLM judge at http://127\.0\.0\.1:\d+/v1/chat/completions did not answer "
                                         r"after 3 attempts"):
        llm.reward_score("q", "g", "p")
    assert len(server.bodies) == 3 and time.time() - t0 < 3


def test_unreachable_endpoint():  # ping() is one request through the same path
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = LLMJudge(f"http://127.0.0.1:{port}/v1/", "m", timeout=1.0, retries=1, backoff=0.01)
    assert llm.url == f"http://127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(JudgeError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions did not answer after 2 "
                                         r"attempts .*start the server"):
        llm.is_repetition("a", "b")
    with pytest.raises(JudgeError, match="did not answer after 2 attempts"):
        llm.ping()
    with pytest.raises(ValueError, match="base URL"):
        LLMJudge("", "m")


def test_map_runs_requests_in_flight_and_dedups():
    server = FakeServer(default=lambda user: str(len(user.split("Predicted Answer: ")[1]) % 3 + 1))  # 1..3
    try:
        server.script = [("sleep", 0.2, None)] * 6
        llm = fast(server.url, workers=4)
        reqs = [("q", "g", "x" * n) for n in range(6)] + [("q", "g", "xx")]
        assert llm.benchmark_score.map(reqs) == [n % 3 for n in range(6)] + [2]
        assert len(server.bodies) == 6 and server.max_active > 1
        # judge_many goes through .map, and metrics use it for the benchmark
        assert judge_many(llm.benchmark_score, [("q", "g", "x")]) == [1]
        rec = {"video": "v", "question_id": "a", "duration": 10,
               "conversation": [{"role": "user", "content": "q", "time": 0}],
               "answer": [{"role": "assistant", "content": "g", "related_timespan": [0, 9], "reply_timespan": [0, 10]}]}
        res = proactive_pauc([rec], {"a": [{"time": 2, "content": "x"}, {"time": 5, "content": "y"}]},
                             llm.benchmark_score)
        # "x" -> 1 at 2 s, "x y" -> len 3 % 3 = 0 at 5 s: area = 0.5*1 + 1.5*1 + 7.5*0 = 2 -> 2/20
        assert res["pauc"] == pytest.approx(10.0)
    finally:
        server.close()
