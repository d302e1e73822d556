"""Helpers of benchmarks/beyond_paper.py: one training run as a spec, its commands, its
execution (a fresh `scdnn_tf.train` process, then `scdnn_tf.evaluate` per evaluation set),
the reuse of finished runs, per-group AP and the markdown tables.

Kept apart from the CLI so that tests can drive every piece without training.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time

from benchmarks.train_log import parse_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FLAGS = os.path.join(REPO, "scdnn_tf", "configs", "demo.flags")
THREAD_VARS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    Attributes:
      experiment, variant, seed: what it is (variant names a row of the table).
      flags: training flags after `--flagfile=configs/demo.flags` (data, recipe, option).
      eval_sets: (name, TFRecord glob) pairs scored with `scdnn_tf.evaluate` at the end.
      steps, warmup_steps: the schedule (warm-up as the recipe's, 0 if it would not fit).
      flagfile: the recipe the flags are added to (default: the demo recipe).
    """

    experiment: str
    variant: str
    seed: int
    flags: tuple[str, ...]
    eval_sets: tuple[tuple[str, str], ...]
    steps: int
    warmup_steps: int
    flagfile: str = DEMO_FLAGS

    @property
    def name(self) -> str:
        return f"{self.variant}_seed{self.seed}"


def make_runs(experiment: str, variants: dict[str, tuple[str, ...]], seeds, common_flags,
              eval_sets, steps: int, recipe_warmup: int, flagfile: str = DEMO_FLAGS) -> list[Run]:
    """Runs of every variant for every seed, seed-major (contenders share the load)."""
    warmup = recipe_warmup if steps > recipe_warmup else 0
    return [Run(experiment, variant, int(seed), tuple(common_flags) + tuple(extra),
                tuple(eval_sets), steps, warmup, flagfile)
            for seed in seeds for variant, extra in variants.items()]


def train_command(run: Run, model_dir: str) -> list[str]:
    """`python -m scdnn_tf.train` for the run (one evaluation, one checkpoint: the end)."""
    return [sys.executable, "-m", "scdnn_tf.train", f"--flagfile={run.flagfile}", *run.flags,
            f"--model_dir={model_dir}", f"--seed={run.seed}", f"--train_steps={run.steps}",
            f"--warmup_steps={run.warmup_steps}", f"--eval_every={run.steps}",
            f"--checkpoint_every={run.steps}", "--logtostderr"]


def evaluate_command(model_dir: str, pattern: str) -> list[str]:
    """`python -m scdnn_tf.evaluate` of the run's final checkpoint on `pattern`."""
    return [sys.executable, "-m", "scdnn_tf.evaluate", f"--model_dir={model_dir}",
            f"--eval_pattern={pattern}", "--logtostderr"]


def thread_env(parallel: int, cpus: int | None = None, base: dict | None = None) -> dict:
    """Environment of a training process when `parallel` of them share `cpus` cores.

    One process keeps TensorFlow's defaults (all cores); several get an equal share of
    the cores as their intra-op (and OpenMP) threads and one inter-op thread, so that
    they do not oversubscribe the machine.
    """
    env = dict(os.environ if base is None else base)
    if parallel > 1:
        share = str(max(1, (cpus or os.cpu_count() or 1) // parallel))
        env.update({name: share for name in THREAD_VARS}, TF_NUM_INTEROP_THREADS="1")
    return env


def result_path(out_dir: str, run: Run) -> str:
    """The run's results json, next to its model_dir."""
    return os.path.join(out_dir, run.experiment, run.name + ".json")


def load_finished(path: str, command: list[str]) -> dict | None:
    """The stored result of a finished run, or None if there is none.

    Raises:
      ValueError: the stored run was trained with another command (its model_dir holds
        another model; delete both or use another --out_dir).
    """
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    if result.get("train_command") != command[1:]:
        raise ValueError(f"{path} holds a run trained with other flags:\n  "
                         f"{' '.join(result.get('train_command', []))}\nnow:\n  "
                         f"{' '.join(command[1:])}\ndelete it and its model_dir, or use "
                         "another --out_dir")
    return result


def _run_logged(cmd: list[str], env: dict, log_path: str) -> str:
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              check=False)
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    if proc.returncode:
        raise RuntimeError(f"{failure_line(text)} (exit {proc.returncode}; log {log_path})\n"
                           f"command: {' '.join(cmd)}\n{text[-3000:]}")
    return text


def failure_line(log: str) -> str:
    """The line of a failed process's log that names the problem: the last one mentioning
    an error, else the last non-empty line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(empty log)"])[-1]


def execute(run: Run, out_dir: str, env: dict) -> dict:
    """Trains and evaluates `run` unless its results json exists; returns the result.

    Result: train_command, the train log's final metrics and img/s (`parse_log`),
    `eval` {set name: the metrics json `scdnn_tf.evaluate` wrote (per-class AP by name)},
    wall_s, load_avg (1-minute, at the end).
    """
    model_dir = os.path.join(out_dir, run.experiment, run.name)
    command = train_command(run, model_dir)
    path = result_path(out_dir, run)
    done = load_finished(path, command)
    if done is not None:
        return done
    os.makedirs(model_dir, exist_ok=True)
    start = time.perf_counter()
    result = parse_log(_run_logged(command, env, model_dir + ".train.log"))
    result["eval"] = {}
    for set_name, pattern in run.eval_sets:
        _run_logged(evaluate_command(model_dir, pattern), env,
                    f"{model_dir}.eval_{set_name}.log")
        # evaluate writes model_dir/metrics.json, overwritten by the next set: read it now.
        with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
            result["eval"][set_name] = json.load(f)
    result.update(experiment=run.experiment, variant=run.variant, seed=run.seed,
                  train_command=command[1:], wall_s=time.perf_counter() - start,
                  load_avg=os.getloadavg()[0])
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:  # written last: marks a finished run
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    return result


def execute_all(runs: list[Run], out_dir: str, parallel: int, report=print):
    """Executes runs, up to `parallel` at once, in the given order.

    A run that fails does not stop the others: it is reported and returned as a failure.

    Returns:
      (results of the finished runs, [(run name, error message)]), both in run order.
    """
    env = thread_env(parallel)
    results, failures = [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        futures = [pool.submit(execute, run, out_dir, env) for run in runs]
        for run, future in zip(runs, futures):
            label = f"{run.experiment} {run.name}"
            try:
                results.append(future.result())
            except (RuntimeError, ValueError, OSError) as e:
                failures.append((label, str(e)))
                report(f"{label}: FAILED: {str(e).splitlines()[0]}")
                continue
            report(f"{label}: done ({results[-1]['wall_s']:.0f} s)")
    return results, failures


def group_ap(per_class_ap: dict, groups: dict[str, list[str]]) -> dict[str, float | None]:
    """Mean AP of each class group; classes without a positive (AP null) are left out.

    Raises:
      KeyError: a group names a class the evaluation does not have.
    """
    out = {}
    for group, names in groups.items():
        missing = [n for n in names if n not in per_class_ap]
        if missing:
            raise KeyError(f"group {group!r}: classes {missing} are not in the label map "
                           f"({sorted(per_class_ap)})")
        values = [per_class_ap[n] for n in names if per_class_ap[n] is not None]
        out[group] = statistics.mean(values) if values else None
    return out


def run_scores(result: dict, groups: dict[str, list[str]] | None, set_name: str) -> dict:
    """{"mAP": ..., group: mean AP ...} of one run's evaluation `set_name` (fractions)."""
    metrics = result["eval"][set_name]
    scores = {"mAP": metrics["mAP"]}
    if groups:
        scores.update(group_ap(metrics["per_class_AP"], groups))
    return scores


def summarize(results: list[dict], groups, set_name: str) -> dict[str, dict]:
    """{variant: {column: {"mean": x, "seeds": {seed: x}}}} over the runs of each variant."""
    out: dict[str, dict] = {}
    for result in results:
        columns = out.setdefault(result["variant"], {})
        for column, value in run_scores(result, groups, set_name).items():
            cell = columns.setdefault(column, {"seeds": {}})
            cell["seeds"][str(result["seed"])] = value
    for columns in out.values():
        for cell in columns.values():
            values = [v for v in cell["seeds"].values() if v is not None]
            cell["mean"] = statistics.mean(values) if values else None
    return out


def _fmt(value, signed=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _reference(summary: dict, b, column: str):
    """Mean of variant `b` in `column`; for a tuple of variants, the best (largest) mean."""
    names = b if isinstance(b, tuple) else (b,)
    means = [summary[n][column]["mean"] for n in names]
    return None if any(m is None for m in means) else max(means)


def delta_label(a: str, b) -> str:
    return f"{a} - best of ({', '.join(b)})" if isinstance(b, tuple) else f"{a} - {b}"


def markdown_table(summary: dict, columns: list[str], deltas=()) -> str:
    """Rows: each variant's mean x100 (per-seed values in brackets); then a row per (a, b)
    in `deltas`: a's mean minus b's (b a tuple of variants: minus the best of their means,
    column by column)."""
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, cells in summary.items():
        shown = []
        for column in columns:
            cell = cells.get(column, {"mean": None, "seeds": {}})
            seeds = ", ".join(_fmt(cell["seeds"][s]) for s in sorted(cell["seeds"], key=int))
            shown.append(f"{_fmt(cell['mean'])} ({seeds})" if seeds else _fmt(cell["mean"]))
        lines.append(f"| {variant} | " + " | ".join(shown) + " |")
    for a, b in deltas:
        diffs = []
        for column in columns:
            x, y = summary[a][column]["mean"], _reference(summary, b, column)
            diffs.append(_fmt(None if x is None or y is None else x - y, signed=True))
        lines.append(f"| {delta_label(a, b)} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)
