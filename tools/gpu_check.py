"""
The GPU check: everything this kit does only on a GPU, run on one in a few minutes, in one report.

    python tools/gpu_check.py bundle               # here: the offline data a GPU machine lacks, in .gpu_check/
    python tools/gpu_check.py run OUT              # there: every step; OUT/report.md for people, report.json for tools
    python tools/gpu_check.py run OUT --device cpu # the same steps at tiny sizes on a CPU (the CUDA tests skipped)

`bundle` copies what the scripts would download (tiktoken's GPT-2 files, HellaSwag's val set) from ../shared/data and
tokenizes Tiny Shakespeare into shards: about 15 MiB, within the 64 MiB a GPU machine is sent with the repository.
`run` takes the steps below in turn, each in its own processes under its own time limit (all within --minutes, 5.5),
each whatever became of the one before:

  tests         pytest tests/test_gpu.py -k cuda: dtype auto, float16 and bfloat16, the fitter under a 16 GB cap, out of
                memory, compile, the compiled decode step, SIGTERM and --resume, torchrun (NCCL), both recipes
  bench_gpt2    tools/bench.py at GPT-2 124M: the training step (tok/s, MFU, memory) against transformers', batch-1
                decoding with the KV cache, without it and compiled (a CUDA graph), HellaSwag's scorer
  train         train_gpt2.py as a user runs it at GPT-2 124M on Tiny Shakespeare: the batch fitted, compile, the step
                line's tok/s and MFU, HellaSwag in training, the final checkpoint
  bench_modern  the same training step as bench_gpt2's with --recipe modern (Muon)
"""

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's modules, a folder up
from bench import machine
from timing import si

from cli import ArgumentParser, InputError
from hardware import pick_device

SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLE = REPO / ".gpu_check"  # ignored by git: named in the device tool's carry
OFFLINE = ["tiktoken_cache", "hellaswag/hellaswag_val.jsonl", "tinyshakespeare/input.txt"]  # as in ../shared/data
CARRY_LIMIT = 64 * 2**20  # what the device tool sends: the repository and the carried folders together
GOALS = {"train MFU, GPT-2 124M, T=1024, bf16, compile": 0.50, "batch-1 decoding, compiled, tok/s": 1000}
# per step: its time limit in seconds on a GPU, and its flags by device (tiny on a CPU: a check of the command alone)
LIMITS = {"tests": 100, "bench_gpt2": 100, "train": 70, "bench_modern": 60}  # 330 s: --minutes 5.5
BENCH = {"cuda": ["--batch_size", "32", "--repeats", "5"], "cpu": ["--quick", "--repeats", "1", "--new_tokens", "4"]}
TRAIN = {"cuda": ["--model", "gpt2", "--max_steps", "4", "--hellaswag_limit", "200"]}
TRAIN["cpu"] = ["--model", "micro", "--seq_len", "64", "--total_batch_size", "512", "--max_steps", "3"]
TRAIN["cpu"] += ["--hellaswag_limit", "8"]


def folder_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def repository_bytes(*bundles):
    """What the device tool sends besides the bundle: the files git tracks or leaves unignored (outside a git checkout,
    every file but .git and the bundles: more, not less)."""
    git_files = ["git", "ls-files", "-co", "--exclude-standard", "-z"]
    listed = subprocess.run(git_files, cwd=REPO, capture_output=True, check=False)
    if listed.returncode == 0:
        files = [REPO / name for name in listed.stdout.decode().split("\0") if name]
    else:
        skip = [REPO / ".git", *(Path(b).resolve() for b in bundles)]
        files = [p for p in REPO.rglob("*") if not any(p == s or s in p.parents for s in skip)]
    return sum(p.stat().st_size for p in files if p.is_file())


def bundle(data, folder):
    """The offline data in `folder`, written beside it first and renamed: never half a bundle."""
    missing = [name for name in OFFLINE if not (data / name).exists()]
    if missing:
        raise InputError(f"{data} lacks {', '.join(missing)}: name the offline data folder with --data")
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in OFFLINE:
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (data / name).is_dir() else shutil.copy2
        copy(data / name, partial / name)
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(partial / "tiktoken_cache")}
    fineweb = [sys.executable, str(REPO / "fineweb.py"), "--dataset", "tinyshakespeare", "--shard_size", "32768"]
    subprocess.run([*fineweb, "--out", str(partial / "shards")], env=env, check=True, stdout=subprocess.DEVNULL)
    size, repo = folder_bytes(partial), repository_bytes(folder, partial)
    if size + repo > CARRY_LIMIT:
        raise InputError(f"the bundle ({size:,} bytes) and the repository ({repo:,}) exceed the 64 MiB sent")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"{folder}: {size / 2**20:.1f} MiB, the repository {repo / 2**20:.1f} MiB; together under 64 MiB")


# -----------------------------------------------------------------------------
# the steps
def commands(device, folder, junit):
    """(name, command) of each step, in order."""
    python = [sys.executable]
    tests = [*python, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/test_gpu.py", "-k", "cuda"]
    tests += [f"--junitxml={junit}", *(["-n", "6", "--dist", "loadgroup"] if device == "cuda" else [])]
    bench = [*python, "tools/bench.py", "--device", device, *BENCH[device]]
    bench += ["--hellaswag_dir", str(folder / "hellaswag")]
    train = [*python, "train_gpt2.py", "--device", device, *TRAIN[device], "--data_dir", str(folder / "shards")]
    train += ["--log_dir", str(Path(junit).parent / "log"), "--hellaswag_dir", str(folder / "hellaswag")]
    return {
        "tests": tests,
        # compiled on a GPU (and its compiled decoding timed); a CPU's compile would take a third of the CPU mode's time
        "bench_gpt2": [*bench, "--only", "train,generate,hellaswag", *(["--compile"] if device == "cuda" else [])],
        "train": train,
        "bench_modern": [*bench, "--only", "train", "--recipe", "modern"],
    }


def descendants(pid):
    """Every process under pid, from Linux's /proc: torchrun starts its ranks in sessions of their own, out of reach of
    a signal to its process group."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process may end while it is read
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, generation = [], [pid]
    while generation:
        generation = [child for child, parent in parents.items() if parent in generation]
        found += generation
    return found


def run_step(command, log, limit, env):
    """(status, seconds): the command's output into `log`. Past `limit` seconds it is interrupted (pytest then writes
    what it has, torchrun stops its ranks), and 10 s later killed, with every process it started."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            everyone = [proc.pid, *descendants(proc.pid)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for pid in everyone:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {limit:.0f} s"
    return status, time.perf_counter() - t0


def tests_in(junit):
    """[{name, outcome, seconds, message}] of each test in pytest's JUnit XML (none if pytest wrote none)."""
    if not Path(junit).is_file():
        return []
    outcomes, results = {"failure": "failed", "error": "error", "skipped": "skipped"}, []
    for case in ET.parse(junit).iter("testcase"):
        child = next((c for c in case if c.tag in outcomes), None)
        message = (child.get("message") or "").strip() if child is not None else ""
        results.append(
            dict(
                name=case.get("name"),
                outcome=outcomes[child.tag] if child is not None else "passed",
                seconds=float(case.get("time", 0)),
                message=message.splitlines()[0][:300] if message else "",
            )
        )
    return results


def last_json(log):
    """The figures of a bench log: its JSON line, the last one (a warning at exit may follow it); None without one."""
    lines = Path(log).read_text(errors="replace").splitlines()
    line = next((line for line in reversed(lines) if line.startswith('{"machine"')), None)
    with contextlib.suppress(TypeError, json.JSONDecodeError):
        return json.loads(line)
    return None


def train_figures(log):
    """From train_gpt2.py's output: the micro-batch, the last step's tok/s and MFU, the last val loss and HellaSwag."""
    text = Path(log).read_text(errors="replace")
    steps = re.findall(r"^step \d+ \|.* tok/sec (\d+) \| mfu ([\d.]+%|n/a)", text, re.MULTILINE)
    batch = re.search(r"tokens per step = (\d+) x", text)
    events = {kind: re.findall(rf"^(\d+) {kind} ([\d.]+)$", text, re.MULTILINE) for kind in ("val", "hella")}
    return dict(
        steps=len(steps),
        evaluated=int(events["val"][-1][0]) if events["val"] else None,
        batch_size=int(batch.group(1)) if batch else None,
        tokens_per_s=int(steps[-1][0]) if steps else None,
        mfu=steps[-1][1] if steps else None,
        **{kind: float(values[-1][1]) if values else None for kind, values in events.items()},
    )


# -----------------------------------------------------------------------------
# the report
def environment(device):
    """The machine and the versions the figures belong to."""
    info = machine(device, None)
    info |= {name: importlib.metadata.version(name) for name in ("transformers", "tiktoken", "numpy")}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        memory = torch.cuda.get_device_properties(device).total_memory
        info |= dict(cuda=torch.version.cuda, capability=f"{major}.{minor}", memory_gib=round(memory / 2**30, 1))
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        if shutil.which("nvidia-smi"):
            info["driver"] = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return info


def dig(results, *keys):
    for key in keys:
        results = results.get(key) if isinstance(results, dict) else None
    return results


def figures(results):
    """(what, value) rows of the figures the steps printed, those they printed."""
    rate = lambda x, unit: si(x, unit) if x else "n/a"
    peak = dig(results, "bench_gpt2", "peak", "bf16_flops")
    rows = [("bf16 matmul peak, measured (MFU's datasheet peak aside)", rate(peak, "FLOP/s"))] if peak else []
    for recipe in ("gpt2", "modern"):
        train = dig(results, f"bench_{recipe}", "train") or {}
        memory = train.get("ours_peak_memory")
        if train:
            ours = f"{rate(train['ours_tokens_per_s'], 'tok/s')}, MFU {100 * train['ours_mfu']:.1f} %"
            if peak:  # how far from what this device's matmuls reach: the limit a missed goal meets
                ours += f" ({100 * train['ours_tokens_per_s'] * train['flops_per_token'] / peak:.1f} % of the measured)"
            ours += f", {memory / 2**30:.1f} GiB at its peak" if memory else ""
            rows.append((f"train step, --recipe {recipe}", ours))
            hf = f"{rate(train['hf_tokens_per_s'], 'tok/s')}, MFU {100 * train['hf_mfu']:.1f} %"
            rows.append((f"train step, transformers' GPT-2 (beside --recipe {recipe})", hf))
    generate = dig(results, "bench_gpt2", "generate") or {}
    for side in ("cache", "no_cache", "compiled"):
        if f"{side}_tokens_per_s" in generate:
            rows.append(
                (f"batch-1 decoding, {side.replace('_', ' ')}", rate(generate[f"{side}_tokens_per_s"], "tok/s"))
            )
    if generate:
        same = generate["same_tokens"], generate.get("compiled_same_tokens")
        rows.append(("greedy tokens: cache = no cache, compiled = cache", f"{same[0]}, {same[1]}"))
    hella = dig(results, "bench_gpt2", "hellaswag") or {}
    if hella:
        scored = f"{rate(hella['batched_examples_per_s'], 'ex/s')} batched, {rate(hella['reference_examples_per_s'], 'ex/s')}"
        rows.append(("HellaSwag scoring", scored + " one example per forward"))
    train = results.get("train") or {}
    if train.get("steps"):
        rows.append(
            (
                "train_gpt2.py, last step",
                f"B={train['batch_size']}, {train['tokens_per_s']:,} tok/s, MFU {train['mfu']}",
            )
        )
        rows.append(
            (
                f"train_gpt2.py, the last val loss and HellaSwag (step {train['evaluated']})",
                f"{train['val']}, {train['hella']}",
            )
        )
    return rows


def goals(results, device):
    """{goal: {target, measured, verdict}}: the speed goals of a GPU run."""
    train_mfu = dig(results, "bench_gpt2", "train", "ours_mfu")
    decode = dig(results, "bench_gpt2", "generate", "compiled_tokens_per_s")
    verdicts = {}
    for (goal, target), value in zip(GOALS.items(), (train_mfu, decode), strict=True):
        verdict = "not measured" if value is None else "met" if value >= target else "missed"
        verdict = verdict if device.type == "cuda" else "n/a: not a GPU"
        verdicts[goal] = dict(target=target, measured=value, verdict=verdict)
    return verdicts


def markdown(env, steps, tests, results, device):
    title = env["name"] + (f", CUDA {env['cuda']}, compute capability {env['capability']}" if "cuda" in env else "")
    lines = [f"# GPU check: {title}", ""]
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers", "tiktoken", "numpy", "python"))
    lines += [
        f"{versions}; {env['cores']} cores; {env.get('memory_gib', '?')} GiB; driver {env.get('driver', '?')}; {env['date']}",
        "",
    ]
    lines += ["| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s['status']} | {s['seconds']:.0f} |" for name, s in steps.items()]
    counts = {
        outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "error", "skipped")
    }
    lines += ["", "## Tests: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n), ""]
    lines += ["| test | outcome | seconds | message |", "| --- | --- | --- | --- |"]
    cell = lambda text: str(text).replace("|", "\\|")  # a | inside a message would end the table's cell
    lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} | {cell(t['message'])} |" for t in tests]
    lines += ["", "## Figures", "", "| what | measured |", "| --- | --- |"]
    lines += [f"| {what} | {value} |" for what, value in figures(results)]
    lines += ["", "## Speed goals", "", "| goal | target | measured | verdict |", "| --- | --- | --- | --- |"]
    for goal, g in goals(results, device).items():
        value = g["measured"]
        shown = "n/a" if value is None else f"{value:.3f}" if value < 1 else f"{value:,.0f}"  # an MFU, or tok/s
        lines.append(f"| {goal} | {g['target']:,} | {shown} | {g['verdict']} |")
    for name, s in steps.items():
        if s["status"] != "ok" and Path(s["log"]).is_file():
            tail = Path(s["log"]).read_text(errors="replace").splitlines()[-30:]
            lines += ["", f"## {name}: the end of {Path(s['log']).name}", "", "```", *tail, "```"]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# the command line
def write_report(out, info, steps, junit, results, device):
    """OUT/report.md and OUT/report.json as the steps stand: rewritten after each, so that a run cut short by the
    device tool's own limit still leaves one. Returns the markdown."""
    tests = tests_in(junit)
    report = markdown(info, steps, tests, results, device)
    (out / "report.md").write_text(report)
    line = dict(environment=info, steps=steps, tests=tests, results=results, goals=goals(results, device))
    (out / "report.json").write_text(json.dumps(line) + "\n")
    return report


def run(out, device, folder, minutes):
    """Every step in turn, then the report: OUT/report.md (printed too) and OUT/report.json, one line. True if every
    step ended well."""
    if not (folder / "shards").is_dir():
        raise InputError(f"no bundle in {folder}: python tools/gpu_check.py bundle writes it (where ../shared/data is)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: name a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    deadline, info = time.perf_counter() + 60 * minutes, environment(device)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OFFLINE_DATA": str(folder)}  # tests/conftest.py reads it
    env["TIKTOKEN_CACHE_DIR"] = str(folder / "tiktoken_cache")
    steps, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        junit = Path(scratch) / "tests.xml"  # the train step's log dir beside it: only the report and logs go to OUT
        for name, command in commands(device.type, folder, junit).items():
            log, left = out / f"{name}.log", deadline - time.perf_counter()
            if left < 10:
                steps[name] = dict(status="not run: --minutes spent", seconds=0, log=str(log))
                continue
            status, seconds = run_step(command, log, min(LIMITS[name], left), env)
            steps[name] = dict(status=status, seconds=seconds, log=str(log), command=" ".join(command))
            results[name] = train_figures(log) if name == "train" else last_json(log) if name != "tests" else None
            print(f"{name}: {status} in {seconds:.0f} s", flush=True)
            write_report(out, info, steps, junit, results, device)
        report = write_report(out, info, steps, junit, results, device)
    print("\n" + report, end="")
    return all(s["status"] == "ok" for s in steps.values())


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("bundle", help="write the offline data a GPU machine needs into one folder")
    pack.add_argument("--data", type=Path, default=SHARED_DATA, help="the offline data (../shared/data's layout)")
    pack.add_argument("--to", type=Path, default=BUNDLE, help="the folder to write (the device tool's carry)")
    check = commands.add_parser("run", help="run every step and write the report into OUT")
    check.add_argument("out", type=Path, help="the folder for report.md, report.json and each step's log")
    check.add_argument("--device", default="auto", help="cuda (auto where there is one), or cpu: tiny sizes")
    check.add_argument("--bundle", type=Path, default=BUNDLE, help="the folder `bundle` wrote")
    check.add_argument(
        "--minutes", type=float, default=6.0, help="the whole run's time; a step left without is not run"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "bundle":
            return bundle(args.data, args.to)
        device = pick_device(args.device)
        if device.type not in ("cuda", "cpu"):
            raise InputError(f"--device {args.device}: the check runs on cuda, or on cpu at tiny sizes")
        if not run(args.out, device, args.bundle, args.minutes):
            raise SystemExit(1)
    except InputError as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
