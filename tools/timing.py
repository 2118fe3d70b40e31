"""
tools/bench.py's clock and table: each side of a benchmark warmed up, then the sides timed in turn (a shared machine's
speed drifts, and both sides then share the drift), their medians as rates, one line of the table each.
"""

import statistics
import time

import torch


def sync(device):  # GPU kernels run asynchronously: a timer read before they finish measures only the launch
    if device.type in ("cuda", "mps"):
        torch.cuda.synchronize(device) if device.type == "cuda" else torch.mps.synchronize()


def interleaved(runs, repeats, device, warmup=1):
    """Median seconds of each run (name -> function), called in turn after warm-up; and what each returned last."""
    results, seconds = {}, {name: [] for name in runs}
    for name, run in runs.items():
        for _ in range(warmup):
            results[name] = run()
    for _ in range(repeats):
        for name, run in runs.items():
            sync(device)
            t0 = time.perf_counter()
            results[name] = run()
            sync(device)
            seconds[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in seconds.items()}, results


def compare(runs, repeats, device, amount, unit, warmup=1):
    """interleaved as rates, `amount` per second ({name}_{unit}_per_s), and the first's over the second's (ratio)."""
    seconds, results = interleaved(runs, repeats, device, warmup)
    figures = {f"{name}_{unit}_per_s": amount / s for name, s in seconds.items()}
    first, second = list(runs)[:2]
    return figures | {"ratio": figures[f"{first}_{unit}_per_s"] / figures[f"{second}_{unit}_per_s"]}, results


def si(x, unit):
    """3 significant digits with a k/M/G/T prefix: 2,310 -> '2.31k tok/s'."""
    prefix, scale = next(((p, s) for p, s in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(x) >= s), ("", 1))
    return f"{x / scale:.3g}{prefix} {unit}"


def report(row, ours, baseline, ratio, notes):  # one line of the table
    print(f"{row:<12}| {ours:<28}| {baseline:<34}| {f'{ratio:.2f}x' if ratio else 'ratio'} | {notes}", flush=True)


def report_rates(row, figures, unit, labels, notes):
    """The line of compare's figures: the first two runs' rates, each with its label ({run: label}), and their ratio."""
    per_s = {"tokens": "tok/s", "examples": "ex/s"}[unit]
    ours, baseline = (si(figures[f"{run}_{unit}_per_s"], per_s) + label for run, label in labels.items())
    report(row, ours, baseline, figures["ratio"], notes)


def agreement(same, dtype, what):
    if same:
        return f"same {what}"
    if dtype == torch.float32:  # both sides must then agree exactly
        return f"WARNING: {what} differ"
    return f"{what} differ ({str(dtype)[6:]} rounds the sides differently)"  # so a near tie can go either way
