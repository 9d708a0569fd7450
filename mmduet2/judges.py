"""Judges that score a reply against a gold answer: a rule judge for the toy benchmark, an LLM judge for real ones.

The paper (docs/method.md sections 3-5) asks an LLM behind an OpenAI-compatible chat API for one digit: the
benchmark's official scorer (GPT-4.1) asks for 1..3 and reads the LAST standalone digit 1..3 of the answer, minus 1
(so 0..2, and "Score: 2" counts); the RL reward (Qwen3-32B) asks for 0..4 and is read by the same rule; "is this
reply a repetition" is yes/no. `LLMJudge` does that with the standard library only: requests in flight on a thread
pool, retries with exponential backoff, a progress line while a long batch is judged, and an append-only JSON-lines
cache so a rerun never pays for the same request twice. An answer without a digit on the scale (or a yes/no) is a
failed judgement: None, counted, logged, and never cached, so a rerun against a working judge asks again; `ping()`
checks the endpoint before a run starts and `check_failures(max_rate)` stops a run whose judge mostly fails.
Departure from the released code: the 5-level reward rubric asks for 0..4 directly (the released prompt used 1..5,
minus 1).

`RuleJudge` reads (colour, shape) pairs for ShapeWatch, so the toy trains and evaluates without any server.
Every judge is a callable; `judge_many` runs a list of requests through `judge.map` when the judge has one.
"""
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from .toy import VOCAB  # the colour and shape words of ShapeWatch, which the rule judges read

log = logging.getLogger(__name__)


def judge_many(judge, requests):
    """[judge(*r) for r in requests], through `judge.map(requests)` when the judge has it (several in flight)."""
    requests = list(requests)
    return list(judge.map(requests)) if hasattr(judge, "map") else [judge(*r) for r in requests]


# ---- ShapeWatch rule judge -------------------------------------------------------------------------------

def parse_objects(text):
    """The (colour, shape) pairs a text names, in order; a colour or shape named alone gives None for the other.

    "A red circle and a blue square appeared." -> [("red", "circle"), ("blue", "square")];
    "Something green, then triangles." -> [("green", "triangle")]; "Nothing yet." -> [].
    """
    pairs, colour = [], None
    for w in re.findall(r"[a-z]+", text.lower()):
        if w.endswith("s") and w[:-1] in VOCAB["shapes"]:
            w = w[:-1]  # plural
        if w in VOCAB["colours"]:
            if colour:
                pairs.append((colour, None))
            colour = w
        elif w in VOCAB["shapes"]:
            pairs.append((colour, w))
            colour = None
    if colour:
        pairs.append((colour, None))
    return pairs


class RuleJudge:
    """judge(question, gold, reply) -> 0..max_score from the (colour, shape) pairs of gold and reply.

    Per gold pair, the best reply pair scores max_score when colour and shape are both right, max_score // 2
    when one is, 0 otherwise; several gold pairs (an immediate answer listing objects) average, rounded down.
    With precision=True (the RL reward, which judges each reply alone: docs/method.md section 3.3) the same scoring
    the other way round (per reply pair, its best gold pair) caps the result, so wrong objects named beside the
    right one cost what a wrong claim costs: a policy that cannot tell the shape gains nothing by listing them all
    ("A red circle appeared. A red square appeared." is partly right). The benchmark
    judges the accumulated replies of a span (docs/method.md section 4), where an overlapping span's right answer
    looks like such an extra object, so it keeps precision off. A reply object that contradicts what the question
    asks about (a blue one for "every time a red shape appears") is ignored and earns nothing: partial credit is for
    the attribute the question did not ask, so a policy cannot farm it by naming any object at all. (RL found both
    holes: docs/experiments.md, "Judge and reward holes".)
    A gold naming no object ("Nothing yet.") scores max_score iff the reply names none either.
    Example (max_score 2): question "... a circle ...", gold "A red circle appeared.", reply "A blue circle
    appeared." -> 1; question "... a red shape ...", gold "A red circle appeared.", reply "A blue circle" -> 0,
    reply "A red circle and a red square" -> 2, or with precision min(2, (2 + 1) // 2) = 1.
    """

    def __init__(self, max_score=2, precision=False):
        self.max_score, self.precision = max_score, precision

    def __call__(self, question, gold, reply):
        gold_pairs, reply_pairs = parse_objects(gold), relevant_objects(reply, question)
        if not gold_pairs:
            return self.max_score if not reply_pairs else 0
        if not reply_pairs:
            return 0
        recall = self._match(gold_pairs, reply_pairs)
        return min(recall, self._match(reply_pairs, gold_pairs)) if self.precision else recall

    def _match(self, wanted, offered):
        """Mean over `wanted` pairs of the score of its best match among `offered`, rounded down."""
        best = [max((c == wc) + (s == ws) for c, s in offered) for wc, ws in wanted]
        return sum({2: self.max_score, 1: self.max_score // 2, 0: 0}[b] for b in best) // len(best)


def relevant_objects(text, question=None):
    """The (colour, shape) pairs of `text` that agree with what `question` asks about ("every time a red shape
    appears": only red ones; a lone "blue" or "circle" says nothing about red shapes and is dropped)."""
    pairs = parse_objects(text)
    for qc, qs in parse_objects(question or ""):
        pairs = [(c, s) for c, s in pairs if (qc is None or c == qc) and (qs is None or s == qs)]
    return pairs


def rule_repetition_judge(previous_text, new_reply, question=None):
    """True iff new_reply tells nothing about the question that previous_text has not told.

    Every object the reply names that is relevant to the question must be covered by one named before (a lone
    colour or shape is covered by any earlier object that has it). A reply naming no relevant object ("Nothing
    yet.", or a stray "A blue" under a question about circles) adds nothing only if its words were already said:
    the first "Nothing yet." is new, the second a repeat; so "A red circle appeared. A blue" after "A red circle
    appeared." is a repeat, as the exact repeat is.
    Example: previous "A red circle appeared.", new "The red circle is still here." -> True;
    new "A blue circle appeared." -> False (with the question "... a circle ..."; True under "... a red shape ...").
    """
    seen, new = relevant_objects(previous_text, question), relevant_objects(new_reply, question)
    if not new:
        words = lambda s: " ".join(re.findall(r"[a-z]+", s.lower()))
        return f" {words(new_reply)} " in f" {words(previous_text)} "
    return all(any((c is None or c == pc) and (s is None or s == ps) for pc, ps in seen) for c, s in new)


# ---- LLM judge over an OpenAI-compatible endpoint ---------------------------------------------------------

_RUBRIC_HEAD = ("You are an evaluator for a video question answering system. Your task is to rate whether the "
                "predicted answer covers the key points of the ground truth answer. Use the following scale:\n")
_RUBRIC_TAIL = "Output the score digit only, do not add more explanations."
BENCHMARK_RUBRIC = _RUBRIC_HEAD + (  # 1..3 as the official scorer; parsed to 0..2
    "- 3: Mostly right; the predicted answer covers all key information in the ground truth answer, though it "
    "may have minor inaccuracies or rephrases.\n"
    "- 2: Partly right; the predicted answer has some correct information, but also significant inaccuracies or "
    "missing key points.\n"
    "- 1: Wrong; most of the information is missing, or the predicted answer is not relevant to the question or "
    "in very poor quality.\n") + _RUBRIC_TAIL
REWARD_RUBRIC = _RUBRIC_HEAD + (
    "- 4: Fully covered; all key information in the ground truth answer, with no significant inaccuracies.\n"
    "- 3: Mostly covered; all key information, but with minor inaccuracies or rephrasing.\n"
    "- 2: Partially covered; some correct information, but missing key points or with significant inaccuracies.\n"
    "- 1: Largely incorrect; some relevant information, but mostly inaccurate or irrelevant.\n"
    "- 0: Incorrect; not relevant to the question, or very poor in quality.\n") + _RUBRIC_TAIL
REWARD_MAX = 4  # the top of REWARD_RUBRIC's scale: the reward's S (RewardConfig.max_score)
REPETITION_PROMPT = (
    "You are an evaluator for a multi-turn video question answering system. Your task is to judge whether a new "
    "reply generated by the model is repetitive (all its information is already covered by previous turns) or "
    "not.\nOutput \"yes\" if all information in the new turn is already covered by previous turns. Output \"no\" "
    "if there is new information in the new turn.\nOnly reply with \"yes\" or \"no\". Do not add any explanation.")


def score_message(question, gold, pred):
    return f"Question: {question}\nGround Truth Answer: {gold}\nPredicted Answer: {pred}"


def repetition_message(previous_text, new_reply, question=None):
    """The released repetition prompt shows no question (the rule judge needs it, an LLM does not)."""
    return f"Previous Turns: {previous_text}\nNew Turn: {new_reply}"


def _strip_think(text):
    return re.sub(r"<think>.*?</think>", "", text, flags=re.S)  # a reasoning model's think block holds digits too


def parse_score(text, lo, hi):
    """The last standalone digit in lo..hi of the answer, minus lo (the official scorer's rule); None if none.

    Benchmark (lo, hi) = (1, 3): "3" -> 2, "Score: 2" -> 1, "between 1 and 3, I say 3" -> 2, "23" or "7" -> None.
    Reward (0, 4): "4" -> 4, "Rating: 0." -> 0."""
    digits = [int(d) for d in re.findall(r"\b\d\b", _strip_think(text)) if lo <= int(d) <= hi]
    return digits[-1] - lo if digits else None


def parse_yes_no(text):
    """'Yes.' -> True, 'no' -> False; otherwise the last standalone yes/no ("Answer: yes" -> True); else None."""
    t = _strip_think(text).strip().strip("\"'*.` ").lower()
    words = re.findall(r"\b(yes|no)\b", t)
    first = re.match(r"(yes|no)\b", t)
    return None if not words else (first.group(1) if first else words[-1]) == "yes"


class JudgeError(RuntimeError):
    """The judge endpoint could not be used (unreachable, timing out, or refusing the request)."""


class _Task:
    """One kind of question to an LLMJudge, as a callable with a batch `map` (so `judge_many` parallelises it)."""

    def __init__(self, llm, system, build, parse):
        self.llm, self.system, self.build, self.parse = llm, system, build, parse

    def __call__(self, *args):
        return self.map([args])[0]

    def map(self, requests):
        return self.llm.ask([(self.system, self.build(*r)) for r in requests], self.parse)


class LLMJudge:
    """Judge over an OpenAI-compatible /chat/completions endpoint.

    llm = LLMJudge("http://localhost:8000/v1", "Qwen/Qwen3-32B", cache_path="runs/judge_cache.jsonl")
    llm.ping()  # before streaming starts: raises JudgeError if the endpoint cannot be used
    llm.benchmark_score(q, gold, pred) -> 0..2 | None      llm.reward_score(q, gold, pred) -> 0..4 | None
    llm.is_repetition(previous_text, new_reply) -> bool | None;  each also has .map([args, ...]) -> list.
    llm.check_failures(0.1)  # raises JudgeError once more than 10 % of the judgements so far failed
    The API key is read from the environment variable `api_key_env` (none needed for local servers).
    `timeout` is seconds per HTTP attempt (`retries` more attempts follow, with backoff); `progress_every` is the
    seconds between progress lines on stderr while a batch is judged.
    `extra_body` is merged into every request, e.g. {"chat_template_kwargs": {"enable_thinking": False}}.
    Counters: `asked` (judgements requested), `sent` (HTTP requests answered), `cache_hits`, `failures`
    (judgements without a usable answer).
    """

    def __init__(self, base_url, model, api_key_env="OPENAI_API_KEY", cache_path=None, timeout=60.0, retries=4,
                 backoff=1.0, workers=8, temperature=0.0, extra_body=None, progress_every=10.0):
        if not base_url or not model:
            raise ValueError("LLMJudge needs a base URL (e.g. http://localhost:8000/v1) and a model name.")
        if not timeout or timeout <= 0:
            raise ValueError(f"LLMJudge timeout={timeout} must be a positive number of seconds per request.")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.api_key_env, self.api_key = model, api_key_env, os.environ.get(api_key_env)
        self.timeout, self.retries, self.backoff, self.workers = timeout, retries, backoff, workers
        self.progress_every = progress_every
        self.extra = {"temperature": temperature, **(extra_body or {})}
        self.cache_path, self.cache, self.lock = cache_path, {}, threading.Lock()
        self.asked = self.sent = self.cache_hits = self.failures = 0
        if cache_path and os.path.exists(cache_path):
            with open(cache_path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.cache[row["key"]] = row["content"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash: that request is simply asked again
        self.benchmark_score = _Task(self, BENCHMARK_RUBRIC, score_message, lambda t: parse_score(t, 1, 3))
        self.reward_score = _Task(self, REWARD_RUBRIC, score_message, lambda t: parse_score(t, 0, REWARD_MAX))
        self.is_repetition = _Task(self, REPETITION_PROMPT, repetition_message, parse_yes_no)

    def _payload(self, system, user):
        return {"model": self.model, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": user}], **self.extra}

    def _store(self, key, content):
        with self.lock:
            self.cache[key] = content
            if self.cache_path:
                os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
                with open(self.cache_path, "a+") as f:
                    f.seek(0, os.SEEK_END)
                    if f.tell():  # start on a fresh line if a crash left the last one unfinished
                        f.seek(f.tell() - 1)
                        if f.read(1) != "\n":
                            f.write("\n")
                    f.write(json.dumps({"key": key, "content": content}) + "\n")

    def _post(self, payload):
        """The answer text of one request; None for a 200 reply without a message; JudgeError when unusable."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    raw = r.read()
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code != 429:  # a wrong model name, URL or key does not heal by retrying
                    detail = e.read()[:200].decode(errors="replace")
                    raise JudgeError(f"LLM judge at {self.url} refused the request (HTTP {e.code}: {detail}); "
                                     f"check the URL, the model name and ${self.api_key_env}.") from None
                last = f"HTTP {e.code}"
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out
                last = str(getattr(e, "reason", None) or e) or type(e).__name__
            else:
                with self.lock:
                    self.sent += 1
                try:
                    content = json.loads(raw)["choices"][0]["message"]["content"]
                    return content if isinstance(content, str) else None
                except (ValueError, KeyError, IndexError, TypeError):
                    log.warning("LLM judge at %s sent a reply without choices[0].message.content: %r",
                                self.url, raw[:200])
                    return None
        raise JudgeError(f"LLM judge at {self.url} did not answer after {self.retries + 1} attempts (last error: "
                         f"{last}); start the server or fix the judge URL.")

    def ping(self):
        """One tiny request, before a run starts; raises JudgeError if the endpoint cannot be used."""
        if self._post(self._payload("Reply with the digit 1.", "1")) is None:
            raise JudgeError(f"LLM judge at {self.url} answered without choices[0].message.content; point the judge "
                             "URL at an OpenAI-compatible /chat/completions endpoint.")

    def check_failures(self, max_rate):
        """Raise JudgeError if more than `max_rate` of the judgements so far failed (no usable answer)."""
        if self.asked and self.failures / self.asked > max_rate:
            raise JudgeError(f"LLM judge at {self.url} failed {self.failures} of {self.asked} judgements "
                             f"({self.failures / self.asked:.0%}, more than the allowed {max_rate:.0%}): check its "
                             "answers in the log (a digit on the rubric's scale is needed) or the judge model.")

    def ask(self, requests, parse):
        """Parsed answers for [(system, user)], asking only what the cache lacks, `workers` requests in flight.
        A cached answer that does not parse (written by an older parser) is asked again."""
        payloads = [self._payload(s, u) for s, u in requests]
        keys = [hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest() for p in payloads]
        answers = {k: parse(self.cache[k]) for k in keys if k in self.cache}
        answers = {k: v for k, v in answers.items() if v is not None}
        todo = {k: p for k, p in zip(keys, payloads) if k not in answers}
        with self.lock:
            self.asked += len(keys)
            self.cache_hits += sum(k in answers for k in keys)
        if todo:
            pool = ThreadPoolExecutor(max_workers=min(self.workers, len(todo)))
            last, shown = time.time(), False
            try:
                futures = {pool.submit(self._post, p): k for k, p in todo.items()}
                for done, fut in enumerate(as_completed(futures), 1):
                    content = fut.result()
                    answers[futures[fut]] = value = None if content is None else parse(content)
                    if value is None:
                        log.warning("LLM judge gave an unusable answer (a failed judgement, not cached): %r", content)
                    else:
                        self._store(futures[fut], content)  # at once, so a crash loses nothing already paid for
                    if time.time() - last >= self.progress_every or shown and done == len(todo):
                        print(f"LLM judge: {done}/{len(todo)} answers", file=sys.stderr, flush=True)
                        last, shown = time.time(), True
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        out = [answers[k] for k in keys]
        with self.lock:
            self.failures += sum(v is None for v in out)
        return out
