"""Is a result real? Run the toy chain (SFT -> RL -> eval) for several seeds and print each seed and mean +- std.

Each seed runs the same commands the README gives, with `--seed N` and its own folders under OUT/sN (the SFT
checkpoint, the RL checkpoint named by --tag, and eval/ with one subfolder per checkpoint). A stage whose output
is complete is not run again, so a reward experiment reuses each seed's SFT model:

    python -m bench.seeds                                      # seeds 0 1 2 of the default chain
    python -m bench.seeds --tag rl_no_rep --rl-args="--w-rep 0"  # the paper's ablation, same SFT models
    python -m bench.seeds --gold data/toy_test7/test_proactive.json --video-root data/toy_test7 --eval-tag test7

Printed per model: PAUC (omega 0.5 and 0), duplicates (share and count of second and later replies in a span),
second replies per gold span holding two or more turns, replies outside every span per example, median delay,
spans hit, the share of turns after an in-span reply that stay silent, and SFT's teacher-forced shape / colour
probe (bench.probe_vision).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [("pauc", "PAUC", 1), ("pauc_omega0", "PAUC w=0", 1), ("duplicate_ratio", "dup %", 100),
        ("second_replies_per_multiturn_span", "2nd replies/span", 1), ("replies_outside", "outside/ex", 1),
        ("median_reply_delay", "delay s", 1), ("answered_spans", "spans hit %", 100),
        ("silent_after_reply", "quiet after %", 100)]


def run(cmd, log_path, env):
    """Run one stage, its output to log_path; stop the benchmark with the log's tail if it fails."""
    t0 = time.time()
    with open(log_path, "w") as log:
        code = subprocess.call([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if code:
        tail = open(log_path).read()[-3000:]
        sys.exit(f"{' '.join(cmd)} failed (exit {code}); the end of {log_path}:\n{tail}")
    return time.time() - t0


def stage(name, cmd, out, env, timings):
    """Run `cmd` unless OUT/name.done says it finished before."""
    done = os.path.join(out, f"{name}.done")
    if os.path.exists(done):
        timings[name] = json.load(open(done))["seconds"]
        return
    timings[name] = run(cmd, os.path.join(out, f"{name}.log"), env)
    with open(done, "w") as f:
        json.dump({"seconds": timings[name], "cmd": cmd}, f)


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the chain")
    p.add_argument("--out", default="runs/seeds", help="folder for every seed's checkpoints and evaluations")
    p.add_argument("--tag", default="rl", help="name of the RL run (a reward experiment gets its own)")
    p.add_argument("--sft-args", default="", help="extra train_sft.py flags, as one string")
    p.add_argument("--rl-args", default="", help="extra train_rl.py flags, as one string")
    p.add_argument("--eval-args", default="", help="extra eval.py flags, as one string")
    p.add_argument("--gold", help="evaluate on this ProactiveVideoQA file (default: the toy's test split)")
    p.add_argument("--video-root", help="folder of --gold's videos")
    p.add_argument("--eval-tag", default="eval", help="name of the evaluation folder (one per test set)")
    p.add_argument("--threads", type=int, help="torch threads of every stage (OMP_NUM_THREADS); default: torch's")
    p.add_argument("--no-probe", action="store_true", help="skip the SFT vision probe")
    args = p.parse_args()

    env = dict(os.environ, PYTHONPATH=ROOT)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    test = (["--gold", args.gold] if args.gold else []) + (["--video-root", args.video_root] if args.video_root else [])
    results, probes, timings = {}, {}, {}
    for seed in args.seeds:
        out = os.path.join(args.out, f"s{seed}")
        os.makedirs(out, exist_ok=True)
        sft, rl, t = os.path.join(out, "sft"), os.path.join(out, args.tag), {}
        stage("sft", ["train_sft.py", "--seed", str(seed), "--out", sft, *shlex.split(args.sft_args)], out, env, t)
        stage(args.tag, ["train_rl.py", "--seed", str(seed), "--sft", sft, "--out", rl, *shlex.split(args.rl_args)],
              out, env, t)
        ev = os.path.join(out, args.eval_tag)
        stage(f"{args.eval_tag}_{args.tag}", ["eval.py", "--checkpoint", f"sft={sft}", "--checkpoint",
                                             f"{args.tag}={rl}", "--out", ev, *test, *shlex.split(args.eval_args)],
              out, env, t)
        results[seed] = {name: json.load(open(os.path.join(ev, name, "metrics.json"))) for name in ("sft", args.tag)}
        if not args.no_probe:
            probes[seed] = probe(sft, args.sft_args)
        timings[seed] = t
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()), flush=True)
    report(results, probes, timings, args.tag)


def probe(sft, sft_args):
    """SFT's teacher-forced caption accuracy (bench.probe_vision) on 60 val videos of the data it trained on."""
    from bench.probe_vision import caption_accuracy
    from mmduet2.checkpoint import load_checkpoint
    from mmduet2.training import Split
    flags = shlex.split(sft_args)
    data = flags[flags.index("--data") + 1] if "--data" in flags else "data/toy"
    model, tok = load_checkpoint(sft)
    return caption_accuracy(model, tok, Split(os.path.join(data, "val.jsonl"), frame_interval=2.0), 60)


def report(results, probes, timings, tag):
    seeds = list(results)
    print(f"\n{'':<18}" + "".join(f"{'seed ' + str(s):>22}" for s in seeds) + f"{'mean +- std':>22}")
    for name in ("sft", tag):
        print(f"[{name}]")
        for key, title, scale in ROWS:
            vals = [None if results[s][name].get(key) is None else results[s][name][key] * scale for s in seeds]
            cells = []
            for s, v in zip(seeds, vals):
                m = results[s][name]
                text = "-" if v is None else f"{v:.2f}"
                if key == "duplicate_ratio":
                    text += f" ({m['duplicates']} of {m['replies_after_first']})"
                cells.append(f"{text:>22}")
            print(f"  {title:<16}" + "".join(cells) + f"{mean_std(vals):>22}")
        if any(results[s][name]["failed_videos"] or results[s][name]["judge_failures"] for s in seeds):
            print("  failed videos / judgements: " + ", ".join(
                f"seed {s}: {results[s][name]['failed_videos']} / {results[s][name]['judge_failures']}" for s in seeds))
    gains = [results[s][tag]["pauc"] - results[s]["sft"]["pauc"] for s in seeds]
    print(f"  {'RL - SFT PAUC':<16}" + "".join(f"{g:>22.2f}" for g in gains) + f"{mean_std(gains):>22}")
    dups = sum(results[s][tag]["duplicates"] for s in seeds)
    after = sum(results[s][tag]["replies_after_first"] for s in seeds)
    print(f"  {tag} duplicates pooled over the seeds: {dups} of {after}" + (f" ({100 * dups / after:.1f} %)" if after else ""))
    if probes:
        print("  SFT probe shape / colour: " + ", ".join(
            f"seed {s}: {100 * probes[s]['shape']:.1f} / {100 * probes[s]['colour']:.1f} %" for s in probes))
    print("  wall time: " + ", ".join(f"seed {s}: {sum(t.values()) / 60:.1f} min" for s, t in timings.items()))


if __name__ == "__main__":
    main()
