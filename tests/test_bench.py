"""The benchmarks that CI cannot run at full size run here on toy shapes, through the same code path: the preset
round trip (random bf16 weights, sharded save, load, every tensor equal, one streamed turn) and the one-shot GPU
check on the CPU (its table's rows carry numbers, and its JSON the same figures)."""
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
        assert [c == "-" for c in cells] == [False] * 4 + [True] * 2 + [False, True], cells
        assert cells[0] == "6" and f"{rows[label]['p50_ms']:.1f}" == cells[1]
        assert 0 < rows[label]["p50_ms"] <= rows[label]["p95_ms"] and rows[label]["frames_per_s"] > 0
    cells = row(out, "LoRA RL update")
    assert [c == "-" for c in cells] == [True] * 4 + [False] * 3 + [True], cells
    update = rows["LoRA RL update"]
    assert update["tokens"] > 6 * 128 and update["sampled"] > 6 and update["step_s"] > 0 and update["peak_gb"] > 0
    assert re.search(r"the same greedy tokens as mmduet2 on \d of 6 turns", out), out  # bf16 may differ at a tie
