"""
Our fast paths against their usual alternatives, each pair in one process on the same data.

    python tools/bench.py                   # CPU: 4 layers x 256, T=256, B=8, compile + bf16 (~3 min on 2 cores)
    python tools/bench.py --batch_size 32   # GPU: GPT-2 124M at T=1024, compile + bf16
    python tools/bench.py --quick           # a tiny model, no compile: runs every path in seconds, measures nothing

  train      our optimizer step (compile, autocast, fused AdamW) vs transformers' GPT2LMHeadModel, eager: tok/s, MFU
  generate   GPT.generate at batch 1 with the KV cache vs recomputing the context for every token
  hellaswag  hellaswag.evaluate, 16 examples per forward, vs one example per forward with every position's logits
  fineweb    fineweb.py's process pool vs one process's encode_ordinary loop (and num_proc loops side by side: the ceiling)

The sides are warmed up, then timed alternately (a shared machine's speed drifts); the medians make a table, then
one JSON line of every figure. Data: hellaswag/ beside hellaswag.py (downloaded if missing) and tinyshakespeare/input.txt
(python fineweb.py --dataset tinyshakespeare), or --hellaswag_dir and --text. Defaults: QUICK, PER_DEVICE, ALL below.
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import io
import itertools
import json
import multiprocessing
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, a folder up
from bench_recipes import bench_ablation, bench_recipes
from timing import agreement, compare, interleaved, report, report_rates, si, sync

import fineweb
import hellaswag
from cli import ArgumentParser, InputError, add_flags, check_at_least
from export_hf import hf_config
from hardware import autocast_dtype, peak_flops, pick_device
from tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer
from train_gpt2 import (
    GPT,
    MODEL_PRESETS,
    PADDED_VOCAB_SIZE,
    RECIPES,
    GPTConfig,
    TrainConfig,
    check_model_config,
    make_model_config,
)

# defaults of the flags left unset; the first tier that names a flag wins (--quick, then the device, then all)
QUICK = dict(model="micro", n_layer=1, batch_size=2, seq_len=32, compile=False, repeats=2, matmul_size=512)
QUICK |= dict(generate_model="micro", new_tokens=8, hellaswag_n=8, hellaswag_batch=4, fineweb_docs=40)
QUICK |= dict(recipe_steps=3, seeds=2)
PER_DEVICE = {
    "cpu": dict(model="mini", batch_size=8, repeats=5, matmul_size=2048),  # about 3 minutes on 2 cores
    "cuda": dict(model="gpt2", batch_size=16, repeats=10, matmul_size=8192),  # B=16 fits any 40 GB GPU
}
ALL = dict(compile=True, generate_model="gpt2", new_tokens=256, hellaswag_n=100, hellaswag_batch=16, fineweb_docs=12000)
PROMPT_TOKENS = 8  # random ids: what a prompt says does not change the work of generating after it
SHAKESPEARE = Path(fineweb.__file__).resolve().parent / "tinyshakespeare" / "input.txt"  # fineweb.py downloads it

# the flags, in --help's order: train_gpt2.py's that apply here, then this script's own (each int one at least 1)
TRAIN_FLAGS = ["device", "dtype", "model", "n_layer", "n_head", "n_embd", "recipe", "batch_size", "seq_len", "seed"]
FLAGS = dict(
    compile=dict(action=argparse.BooleanOptionalAction, help="torch.compile our GPT in the train benchmark"),
    repeats=dict(type=int, help="timed runs of each side, median reported (generate and hellaswag: half, rounded up)"),
    matmul_size=dict(type=int, help="n of the n^3 matmul that measures the peak"),
    generate_model=dict(choices=list(MODEL_PRESETS), help="architecture preset of the generate benchmark"),
    new_tokens=dict(type=int, help="tokens to generate"),
    hellaswag_n=dict(type=int, help="the first N HellaSwag val examples"),
    hellaswag_batch=dict(type=int, help="examples per forward of the batched side"),
    hellaswag_dir=dict(default=str(hellaswag.DATA_DIR), help="hellaswag_val.jsonl's folder, downloaded if missing"),
    fineweb_docs=dict(type=int, help="documents of ~1,300 tokens to tokenize"),
    text=dict(default=str(SHAKESPEARE), help="text cut into those documents"),
    num_proc=dict(type=int, default=os.cpu_count(), help="fineweb.py's --num_proc"),
    recipe_steps=dict(type=int, default=200, help="the gpt2 recipe's longest run, in steps (tools/bench_recipes.py)"),
    seeds=dict(type=int, default=3, help="seeds of each recipe at its best learning rate"),
)


def random_ids(shape, seed, device):  # from a generator of their own: the same ids whatever ran before
    return torch.randint(GPT2_VOCAB_SIZE, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def eager_model(dims, args, device):
    """An eager GPT with room for every generated token (no sliding window), its weights far wider than the 0.02 init,
    with which every logit is nearly equal and two exact paths that round differently pick other tokens or endings."""
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(**{**dims, "block_size": max(1024, PROMPT_TOKENS + args.new_tokens)}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = "ln_" in name and name.endswith(".weight")  # LayerNorm gains stay near 1
            p.normal_(1.0 if gain else 0.0, 0.1 if gain else 0.3)
    return model.to(device).eval()


# -----------------------------------------------------------------------------
# the benchmarks: each prints its row and returns a dict of figures


def matmul(n, device, dtype):  # an n x n x n matmul, 2 n^3 FLOPs: the device's practical peak in that dtype
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return lambda: a @ b


def bench_matmul(n, device, repeats):
    runs = {"bf16": matmul(n, device, torch.bfloat16), "fp32": matmul(n, device, torch.float32)}
    seconds, _ = interleaved(runs, repeats, device, warmup=2)
    figures = {f"{name}_flops": 2 * n**3 / s for name, s in seconds.items()}
    bf16, fp32 = (si(figures[f"{name}_flops"], "FLOP/s") + f" ({name})" for name in ("bf16", "fp32"))
    report("matmul peak", bf16, fp32, figures["bf16_flops"] / figures["fp32_flops"], f"{n}^3, measured")
    return figures


def train_step(loss_fn, model, batches, autocast, optimizers):
    """One optimizer step per call, on the next of the batches (cycled): a training step as train_gpt2.py takes it."""
    batches, params = itertools.cycle(batches), list(model.parameters())

    def step():
        x, y = next(batches)
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def peak_memory(step, device):
    """The most CUDA memory that a warm call of step (its first compiles) holds at once: the weights, the optimizer's
    state, the gradients and the activations. None off CUDA."""
    if device.type != "cuda":
        return None
    step()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def bench_train(args, device, autocast, dtype):
    B, T = args.batch_size, args.seq_len
    torch.manual_seed(args.seed)
    ours, c = GPT(args.model_config).to(device), args.recipe_config
    compiled = torch.compile(ours) if args.compile else ours
    tokens = random_ids((4, B, T + 1), args.seed, device)
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]  # as DataLoaderLite gives them
    optimizers = ours.configure_optimizers(c, device.type)
    ours_step = train_step(lambda x, y: compiled(x, y)[1], ours, batches, autocast, optimizers)
    memory = peak_memory(ours_step, device)  # before the baseline takes memory too
    # transformers' GPT-2 of the same dims, eager, with the same attention kernel, AdamW groups and batches; it gets
    # our loss on its logits, as its own loss would shift the targets again
    hf = GPT2LMHeadModel(hf_config(args.model_config, attn_implementation="sdpa")).to(device).train()
    hf_loss = lambda x, y: F.cross_entropy(hf(input_ids=x, use_cache=False).logits.flatten(0, 1), y.flatten())
    runs = {
        "ours": ours_step,
        "hf": train_step(hf_loss, hf, batches, autocast, GPT.configure_optimizers(hf, TrainConfig(), device.type)),
        # the MFU denominator, timed between the steps: a peak timed minutes apart would credit or blame them for drift
        "peak": matmul(args.matmul_size, device, dtype),
    }
    # the first call of a compiled model compiles it (about a minute on a CPU); the second is warm
    figures, _ = compare(runs, args.repeats, device, B * T, "tokens", warmup=2)
    measured_peak = figures.pop("peak_tokens_per_s") / (B * T) * 2 * args.matmul_size**3
    datasheet_peak = peak_flops(device, dtype)  # hardware.GPU_PEAK_FLOPS': dense bf16 or fp16, None for float32
    peak, flops_per_token = datasheet_peak or measured_peak, ours.flops_per_token(T)  # the same dims: HF's FLOPs too
    figures.update(flops_per_token=flops_per_token, peak_flops=peak, measured_peak_flops=measured_peak)
    figures.update({f"{name}_mfu": figures[f"{name}_tokens_per_s"] * flops_per_token / peak for name in ("ours", "hf")})
    figures["ours_peak_memory"] = memory
    source = f"{str(dtype)[6:]} {'datasheet' if datasheet_peak else 'matmul timed between the steps'}"
    notes = f"MFU {100 * figures['ours_mfu']:.2f}% vs {100 * figures['hf_mfu']:.2f}% of {si(peak, 'FLOP/s')} ({source})"
    notes += f"; ours holds {memory / 2**30:.1f} GiB at its peak" if memory else ""
    report_rates("train step", figures, "tokens", {"ours": f" ({args.recipe})", "hf": " (HF)"}, notes)
    return figures


def bench_generate(args, device, autocast, dtype):
    # the padded vocabulary, as sample.py uses the model
    model = eager_model({**MODEL_PRESETS[args.generate_model], "vocab_size": PADDED_VOCAB_SIZE}, args, device)
    prompt = random_ids((1, PROMPT_TOKENS), args.seed, device)

    def run(cache, new_tokens, compile=False):
        generator = torch.Generator(device=device).manual_seed(args.seed)  # one per call: both paths sample alike
        with autocast:
            return model.generate(prompt, new_tokens, top_k=1, generator=generator, cache=cache, compile=compile)

    sides = {"cache": dict(cache=True), "no_cache": dict(cache=False)}
    if args.compile:  # the one-token step compiled, a CUDA graph on a GPU (sample.py --compile)
        sides["compiled"] = dict(cache=True, compile=True)
    for side in sides.values():
        run(new_tokens=16, **side)  # warm-up: the first forward of a shape sets its kernels up, or compiles
    runs = {name: functools.partial(run, new_tokens=args.new_tokens, **side) for name, side in sides.items()}
    # half the repeats: a run is many forwards
    figures, out = compare(runs, (args.repeats + 1) // 2, device, args.new_tokens, "tokens", warmup=0)
    differ = (out["cache"] != out["no_cache"])[0, PROMPT_TOKENS:].nonzero()  # greedy: the same tokens, in float32
    figures.update(same_tokens=len(differ) == 0, agreeing_tokens=differ[0].item() if len(differ) else args.new_tokens)
    notes = f"{args.generate_model} dims, {args.new_tokens} new tokens, batch 1, "
    notes += agreement(figures["same_tokens"], dtype, f"tokens (the first {figures['agreeing_tokens']} agree)")
    if args.compile:
        figures["compiled_same_tokens"] = torch.equal(out["compiled"], out["cache"])
        compiled = agreement(figures["compiled_same_tokens"], dtype, "tokens")
        notes += f"; compiled: {si(figures['compiled_tokens_per_s'], 'tok/s')}, {compiled}"
    report_rates("generate", figures, "tokens", {"cache": " (KV cache)", "no_cache": " (no cache)"}, notes)
    return figures


@torch.no_grad()
def reference_hellaswag(model, examples, block_size, device, autocast):
    """(n, correct_norm) the usual way (build-nanogpt's): one example's 4 rows per forward, every position's logits."""
    correct_norm = 0
    for ctx, endings, label in examples:
        rows = [(ctx + ending)[-(block_size + 1) :] for ending in endings]
        tokens = torch.zeros(4, max(map(len, rows)), dtype=torch.long)
        scored = torch.zeros(4, tokens.size(1) - 1)  # the positions that predict an ending token
        for i, (row, ending) in enumerate(zip(rows, endings, strict=True)):
            tokens[i, : len(row)] = torch.tensor(row)
            scored[i, len(row) - 1 - len(ending) : len(row) - 1] = 1
        tokens, scored = tokens.to(device), scored.to(device)
        with autocast:
            logits, _ = model(tokens[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none").view(4, -1)
        correct_norm += ((losses * scored).sum(1) / scored.sum(1)).argmin().item() == label
    return len(examples), correct_norm


def bench_hellaswag(args, device, autocast, dtype):
    model = eager_model(vars(args.model_config), args, device)
    examples, block_size = hellaswag.load_examples(args.hellaswag_dir, "val", args.hellaswag_n), model.config.block_size

    def evaluate(batch_size, examples=examples):  # (n, correct_norm), as reference_hellaswag counts them
        return hellaswag.evaluate(model, examples, block_size, device, autocast, batch_size)[::2]

    reference = lambda examples=examples: reference_hellaswag(model, examples, block_size, device, autocast)
    for batch_size in (args.hellaswag_batch, 1):  # warm-up, on one batch
        evaluate(batch_size, examples[: args.hellaswag_batch])
    reference(examples[:2])
    runs = {"batched": lambda: evaluate(args.hellaswag_batch), "reference": reference, "single": lambda: evaluate(1)}
    figures, counts = compare(runs, (args.repeats + 1) // 2, device, len(examples), "examples", warmup=0)
    # random weights, so the accuracies are a check: neither batching nor scoring the ending tokens alone may change one
    figures.update(n=len(examples), **{f"{name}_acc_norm": right / n for name, (n, right) in counts.items()})
    figures["same_counts"] = counts["batched"] == counts["single"] == counts["reference"]
    notes = f"{len(examples)} val examples; ours at 1/forward: {si(figures['single_examples_per_s'], 'ex/s')}; "
    notes += agreement(figures["same_counts"], dtype, "counts")
    labels = {"batched": f" ({args.hellaswag_batch}/forward)", "reference": " (1/forward, all logits)"}
    report_rates("hellaswag", figures, "examples", labels, notes)
    return figures


def shakespeare_documents(path, n_docs, seed):
    """n_docs documents of ~4,000 characters (~1,300 tokens, FineWeb-Edu's mean): the text's paragraphs, shuffled."""
    if not Path(path).is_file():
        raise InputError(
            f"--text {path} does not exist: python fineweb.py --dataset tinyshakespeare downloads it, or name a text file"
        )
    paragraphs = [p for p in Path(path).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rng, docs, current = random.Random(seed), [], []
    while len(docs) < n_docs:
        rng.shuffle(paragraphs)
        for p in paragraphs:
            current.append(p)
            if sum(map(len, current)) >= 4000:
                docs.append("\n\n".join(current))
                current = []
    return docs[:n_docs]


def bench_fineweb(args, device, autocast, dtype):
    docs, enc = shakespeare_documents(args.text, args.fineweb_docs, args.seed), gpt2_tokenizer()
    with tempfile.TemporaryDirectory(prefix="bench_fineweb_") as tmp:
        corpus, runs_so_far = Path(tmp) / "corpus.jsonl", itertools.count()
        corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs), encoding="utf-8")

        def pool():
            out = Path(tmp) / f"out{next(runs_so_far)}"  # a new folder each time: a finished one is skipped
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                fineweb.main(["--input", str(corpus), "--out", str(out), "--num_proc", str(args.num_proc)])
            tokens = sum(len(np.load(p, mmap_mode="r")) for p in out.glob("*.npy"))
            shutil.rmtree(out)
            return tokens

        def loop(part=slice(None)):  # the documents already in memory: only the tokenizer is timed
            return sum(len(enc.encode_ordinary(doc)) + 1 for doc in docs[part])  # + 1: the EOT before each document

        def ceiling():  # what this machine's cores give at best: num_proc loops over their share, nothing shared
            fork = multiprocessing.get_context("fork")  # the loops inherit the documents, nothing is sent
            loops = [fork.Process(target=loop, args=(slice(i, None, args.num_proc),)) for i in range(args.num_proc)]
            for p in loops:
                p.start()
            for p in loops:
                p.join()
            assert all(p.exitcode == 0 for p in loops), "a tokenizer loop failed"

        runs = {"pool": pool, "loop": loop}
        if "fork" in multiprocessing.get_all_start_methods():  # not on Windows
            runs["ceiling"] = ceiling
        n_tokens = loop()
        figures, tokens = compare(runs, args.repeats, device, n_tokens, "tokens")
    assert tokens["pool"] == n_tokens, f"fineweb.py wrote {tokens['pool']} tokens, the loop counted {n_tokens}"
    figures.update(tokens=n_tokens, documents=len(docs), num_proc=args.num_proc)
    notes = f"{len(docs):,} documents, {n_tokens:,} tokens"
    if "ceiling" in runs:
        figures["ceiling_ratio"] = figures["ceiling_tokens_per_s"] / figures["loop_tokens_per_s"]
        notes += f"; {args.num_proc} loops side by side, the cores' ceiling: {figures['ceiling_ratio']:.2f}x"
    report_rates("fineweb", figures, "tokens", {"pool": f" ({args.num_proc} proc)", "loop": " (loop)"}, notes)
    return figures


# -----------------------------------------------------------------------------
# the command line


def load_average():  # runnable processes over the last minute (not on Windows)
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine(device, load_at_start):
    """What the figures were measured on. Other processes on the cores slow every figure, CPU ones most: the load
    average counts them at the start, and this run too at the end."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError, StopIteration):  # Linux names the CPU model here; elsewhere the above will do
            cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
            name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    return {
        "device": str(device),
        "name": name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_at_start": load_at_start,
        "load_at_end": load_average(),
    }


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        type=lambda names: names.split(","),
        default=list(BENCHES)[:4],
        help=f"comma-separated benchmarks to run, of {','.join(BENCHES)} (default: all but recipes, ablation)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (QUICK), under any flag")
    add_flags(parser, TrainConfig, TRAIN_FLAGS)
    for name, kwargs in FLAGS.items():
        parser.add_argument(f"--{name}", **kwargs)
    # the tiers are the defaults: those of the device (and of --quick) that the first parse finds
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--device", default="auto")
    first.add_argument("--quick", action="store_true")
    first, _ = first.parse_known_args(argv)
    on_gpu = first.device.startswith("cuda") or (first.device == "auto" and torch.cuda.is_available())
    parser.set_defaults(
        **{"seq_len": None, **ALL, **PER_DEVICE["cuda" if on_gpu else "cpu"], **(QUICK if first.quick else {})}
    )
    args = parser.parse_args(argv)
    if unknown := [name for name in args.only if name not in BENCHES]:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {','.join(BENCHES)}")
    check_at_least(parser, args, 1, ["n_layer", "n_head", "n_embd", "batch_size", "seq_len"])
    check_at_least(parser, args, 1, [name for name, kwargs in FLAGS.items() if kwargs.get("type") is int])
    # the same flags as train_gpt2.py's, the same model: the recipe's switches and learning rates, the flags' dims
    dims = {name: getattr(args, name) for name in ("model", "n_layer", "n_head", "n_embd")}
    args.recipe_config = dataclasses.replace(TrainConfig(**RECIPES[args.recipe]), **dims)
    args.model_config = make_model_config(args.recipe_config)
    args.seq_len = args.seq_len or args.model_config.block_size
    check_model_config(parser, args.model_config, args)
    return args


BENCHES = {"train": bench_train, "generate": bench_generate, "hellaswag": bench_hellaswag, "fineweb": bench_fineweb}
BENCHES |= {"recipes": bench_recipes, "ablation": bench_ablation}  # an hour or so each: only when --only names them


def main(argv=None):
    t_start, load_at_start = time.perf_counter(), load_average()
    args = parse_args(argv)
    c = args.model_config
    try:
        device = pick_device(args.device)
        dtype, _ = autocast_dtype(args.dtype, device)
        autocast = torch.autocast(device.type, dtype, enabled=dtype != torch.float32)
        print(
            f"{args.model} dims ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide), B={args.batch_size}, "
            f"T={args.seq_len}, {str(dtype)[6:]}{' autocast' if dtype != torch.float32 else ''}, "
            f"compile {'on' if args.compile else 'off'}, {device}, {args.repeats} timed runs per side\n"
        )
        report("benchmark", "ours", "baseline", None, "notes")
        results = {"peak": bench_matmul(args.matmul_size, device, args.repeats)}
        results |= {name: BENCHES[name](args, device, autocast, dtype) for name in args.only}
    except InputError as e:
        raise SystemExit(str(e))
    info = machine(device, load_at_start)
    load = ""
    if load_at_start is not None:
        load = f", load average {info['load_at_start']:.1f} at the start, {info['load_at_end']:.1f} at the end"
    print(
        f"\n{info['name']} ({device}), {info['cores']} cores ({info['torch_threads']} torch threads){load}, "
        f"torch {info['torch']}, {info['date']}"
    )
    config = {"model": args.model, **vars(c), "batch_size": args.batch_size, "seq_len": args.seq_len}
    config |= {"recipe": args.recipe, "dtype": str(dtype)[6:], "compile": args.compile, "repeats": args.repeats}
    print(json.dumps({"machine": info, "config": config, **results, "wall_s": time.perf_counter() - t_start}))


if __name__ == "__main__":
    main()
