"""
Speed of this kit's fast paths against a baseline, each pair in one process on the same data.

    python bench.py                            # CPU: 4 layers x 256, T=256, B=8, compile + bf16 (about 3 minutes on 2 cores)
    python bench.py --batch_size 32            # GPU: GPT-2 124M at T=1024, compile + bf16
    python bench.py --only train,generate --repeats 9
    python bench.py --quick                    # a tiny model, no compile: checks every path in seconds, measures nothing

  train      one optimizer step of our GPT (torch.compile, bf16 autocast, fused AdamW) against transformers'
             GPT2LMHeadModel of the same dims (eager, the same autocast, fused AdamW): tokens/s and MFU
  generate   GPT.generate at batch 1 (GPT-2 124M dims unless --generate_model) with the KV cache against
             recomputing the whole context for every token
  hellaswag  hellaswag.evaluate with 16 examples per forward against the usual scoring, one example per
             forward with the logits of every position (and, in the notes, ours at one example per forward)
  fineweb    fineweb.py end to end (its process pool) against one process calling encode_ordinary in a loop,
             and (in the notes) num_proc such loops side by side on their share of the documents: the
             most that num_proc processes can give on this machine

Each side is warmed up, then the two are timed alternately (ABAB...: a shared machine's speed drifts
from one minute to the next) and the median of the timings is reported. The last line printed is one
JSON object holding every figure. Data comes from its usual place (hellaswag/ and tinyshakespeare/ beside
the scripts), or from the offline copies in ../shared/data beside the checkout when it is not there.
"""

import argparse
import contextlib
import datetime
import io
import itertools
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from train_gpt2 import (GPT2_VOCAB_SIZE, MODEL_PRESETS, PADDED_VOCAB_SIZE, GPT, ArgumentParser, GPTConfig,
                        device_name, make_model_config, peak_flops, pick_device, use_bf16)

BENCHMARKS = ["train", "generate", "hellaswag", "fineweb"]
HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parent / "shared" / "data"  # offline copies of the data, beside the checkout

# defaults of the flags left as None; the first tier that names a flag wins (--quick, then the device, then all)
QUICK = dict(model="micro", n_layer=1, batch_size=2, seq_len=32, compile=False, repeats=2, matmul_size=512,
             generate_model="micro", new_tokens=8, hellaswag_n=8, hellaswag_batch=4, fineweb_docs=40)
PER_DEVICE = {
    "cpu": dict(model="mini", batch_size=8, repeats=5, matmul_size=2048),  # about 3 minutes on 2 cores
    "cuda": dict(model="gpt2", batch_size=16, repeats=10, matmul_size=8192),  # B=16 fits any 40 GB GPU
}
ALL = dict(compile=True, generate_model="gpt2", new_tokens=256, hellaswag_n=100, hellaswag_batch=16, fineweb_docs=12000)
PROMPT_TOKENS = 8  # random ids: what a prompt says does not change the work of generating after it

# -----------------------------------------------------------------------------
# timing


def sync(device):
    # GPU kernels run asynchronously: a timer read before they finish measures only the launch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved(runs, repeats, device, warmup=1):
    """Median seconds of each of runs (name -> function), called alternately `repeats` times after
    `warmup` untimed calls each; also the last value each returned, to check the sides agree."""
    results = {}
    for name, run in runs.items():
        for _ in range(warmup):
            results[name] = run()
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            sync(device)
            t0 = time.perf_counter()
            results[name] = run()
            sync(device)
            seconds[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in seconds.items()}, results


def few(repeats):
    """Timed runs for the benchmarks whose one run is already many forwards and, on a CPU, tens of seconds."""
    return (repeats + 1) // 2


def decisive(model):
    """Redraw the weights far wider than the 0.02 init. With that init every logit is nearly equal, and
    two exact paths that round differently would pick different tokens or endings; speed is the same."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = "ln_" in name and name.endswith(".weight")  # LayerNorm gains stay near 1
            p.normal_(1.0 if gain else 0.0, 0.1 if gain else 0.3)
    return model


# -----------------------------------------------------------------------------
# the benchmarks: each returns a dict of figures


def matmul(n, device, dtype):
    """An n x n x n matmul (2 n^3 FLOPs) to time: the device's practical peak in that dtype."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return lambda: a @ b


def bench_matmul(n, device, repeats):
    """FLOP/s of the matmul in bf16 and in fp32."""
    runs = {"bf16": matmul(n, device, torch.bfloat16), "fp32": matmul(n, device, torch.float32)}
    seconds, _ = interleaved(runs, repeats, device, warmup=2)
    return {f"{name}_flops": 2 * n**3 / s for name, s in seconds.items()}


def train_step(loss_fn, optimizer, params, batches, autocast):
    """One optimizer step per call, on the next of the batches (cycled): a training step as train_gpt2.py takes it."""
    batches = itertools.cycle(batches)

    def step():
        x, y = next(batches)
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_train(args, model_config, device, autocast, bf16, datasheet_peak):
    from transformers import GPT2Config, GPT2LMHeadModel

    B, T = args.batch_size, args.seq_len
    torch.manual_seed(args.seed)
    ours = GPT(model_config).to(device)
    compiled = torch.compile(ours) if args.compile else ours
    ours_optimizer = ours.configure_optimizers(0.1, 6e-4, device.type)

    # the same architecture in transformers, no dropout (we train without it), the same SDPA attention kernel
    c = model_config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                                    n_head=c.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    attn_implementation="sdpa")).to(device).train()
    hf_params = list(hf.parameters())
    groups = [{"params": [p for p in hf_params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in hf_params if p.dim() < 2], "weight_decay": 0.0}]
    hf_optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=device.type in ("cuda", "cpu"))

    # both models get the same batches, and HF our loss on its logits: its own loss shifts the targets again
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(GPT2_VOCAB_SIZE, (4, B, T + 1), generator=g).to(device)
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]  # as DataLoaderLite gives them
    hf_loss = lambda x, y: F.cross_entropy(hf(input_ids=x, use_cache=False).logits.flatten(0, 1), y.flatten())
    runs = {
        "ours": train_step(lambda x, y: compiled(x, y)[1], ours_optimizer, list(ours.parameters()), batches, autocast),
        "hf": train_step(hf_loss, hf_optimizer, hf_params, batches, autocast),
        # the MFU denominator, timed between the steps: a CPU's speed drifts, and a peak measured minutes
        # apart from the steps would credit or blame them for the drift
        "peak": matmul(args.matmul_size, device, torch.bfloat16 if bf16 else torch.float32),
    }
    # the first call of a compiled model compiles it (about a minute on a CPU); the second is warm
    seconds, _ = interleaved(runs, args.repeats, device, warmup=2)
    measured_peak = 2 * args.matmul_size**3 / seconds.pop("peak")
    peak = datasheet_peak or measured_peak
    flops_per_token = ours.flops_per_token(T)  # the same dims, so the same FLOPs for HF
    figures = {"flops_per_token": flops_per_token, "peak_flops": peak, "measured_peak_flops": measured_peak}
    for name, s in seconds.items():
        figures[f"{name}_tokens_per_s"] = B * T / s
        figures[f"{name}_mfu"] = flops_per_token * B * T / s / peak
    figures["ratio"] = figures["ours_tokens_per_s"] / figures["hf_tokens_per_s"]
    return figures


def bench_generate(args, model, device, autocast):
    prompt = torch.randint(GPT2_VOCAB_SIZE, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(args.seed)).to(device)

    def generate(use_kv_cache, new_tokens):
        generator = torch.Generator(device=device).manual_seed(args.seed)  # a fresh one per call: both paths sample alike
        with autocast:
            return model.generate(prompt, new_tokens, top_k=1, generator=generator, use_kv_cache=use_kv_cache)

    for use_kv_cache in (True, False):
        generate(use_kv_cache, 16)  # warm-up: the first forward of a shape sets its kernels up
    runs = {"cache": lambda: generate(True, args.new_tokens), "no_cache": lambda: generate(False, args.new_tokens)}
    seconds, out = interleaved(runs, few(args.repeats), device, warmup=0)
    figures = {f"{name}_tokens_per_s": args.new_tokens / s for name, s in seconds.items()}
    figures["ratio"] = figures["cache_tokens_per_s"] / figures["no_cache_tokens_per_s"]
    # greedy decoding: in float32 the two paths must pick the same tokens; in bf16 they round differently
    # (one query row against the cache, or all of them), so a near tie can go either way and they part
    differ = (out["cache"] != out["no_cache"])[0, PROMPT_TOKENS:].nonzero()
    figures["same_tokens"] = len(differ) == 0
    figures["agreeing_tokens"] = differ[0].item() if len(differ) else args.new_tokens  # before the first difference
    return figures


@torch.no_grad()
def reference_hellaswag(model, examples, block_size, device, autocast):
    """(n, correct_norm) scored the usual way (build-nanogpt's hellaswag.py): one example, its 4 rows padded
    to the longest, per forward, with the logits of every position."""
    correct_norm = 0
    for ctx, endings, label in examples:
        rows = [(ctx + ending)[-(block_size + 1) :] for ending in endings]
        tokens = torch.zeros(4, max(map(len, rows)), dtype=torch.long)
        scored = torch.zeros(4, tokens.size(1) - 1)  # the positions that predict an ending token
        for i, (row, ending) in enumerate(zip(rows, endings)):
            tokens[i, : len(row)] = torch.tensor(row)
            scored[i, len(row) - 1 - len(ending) : len(row) - 1] = 1
        tokens, scored = tokens.to(device), scored.to(device)
        with autocast:
            logits, _ = model(tokens[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none").view(4, -1)
        correct_norm += ((losses * scored).sum(1) / scored.sum(1)).argmin().item() == label
    return len(examples), correct_norm


def bench_hellaswag(args, model, device, autocast):
    import hellaswag  # only its public load_examples and evaluate: its internals change

    data_dir = args.hellaswag_dir or offline_fallback(hellaswag.DATA_DIR, "hellaswag", "hellaswag_val.jsonl")
    examples = hellaswag.load_examples(data_dir, "val", args.hellaswag_n)
    block_size = model.config.block_size

    def evaluate(batch_size):
        return lambda: hellaswag.evaluate(model, examples, block_size, device, autocast, batch_size)[::2]  # (n, correct_norm)

    runs = {"batched": evaluate(args.hellaswag_batch), "single": evaluate(1),
            "reference": lambda: reference_hellaswag(model, examples, block_size, device, autocast)}
    for batch_size in (args.hellaswag_batch, 1):  # warm-up, on one batch
        hellaswag.evaluate(model, examples[: args.hellaswag_batch], block_size, device, autocast, batch_size)
    reference_hellaswag(model, examples[:2], block_size, device, autocast)
    seconds, counts = interleaved(runs, few(args.repeats), device, warmup=0)
    figures = {f"{name}_examples_per_s": len(examples) / s for name, s in seconds.items()}
    figures["ratio"] = figures["batched_examples_per_s"] / figures["reference_examples_per_s"]
    figures["n"] = len(examples)
    for name, (n, correct_norm) in counts.items():
        figures[f"{name}_acc_norm"] = correct_norm / n  # of random weights: a check, not a score
    # neither batching nor scoring the ending tokens alone may change a prediction
    figures["same_counts"] = counts["batched"] == counts["single"] == counts["reference"]
    return figures


def shakespeare_documents(path, n_docs, seed):
    """n_docs documents of ~4,000 characters (~1,300 tokens, about FineWeb-Edu's mean): the paragraphs of
    the text, shuffled anew on each pass over it and joined until long enough."""
    paragraphs = [p for p in Path(path).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rng = random.Random(seed)
    docs, current = [], []
    while len(docs) < n_docs:
        rng.shuffle(paragraphs)
        for p in paragraphs:
            current.append(p)
            if sum(map(len, current)) >= 4000:
                docs.append("\n\n".join(current))
                current = []
                if len(docs) == n_docs:
                    break
    return docs


def bench_fineweb(args, device):
    import fineweb
    from train_gpt2 import gpt2_tokenizer

    text = args.text or offline_fallback(HERE / "tinyshakespeare", "tinyshakespeare", "input.txt") / "input.txt"
    docs = shakespeare_documents(text, args.fineweb_docs, args.seed)
    enc = gpt2_tokenizer()
    with tempfile.TemporaryDirectory(prefix="bench_fineweb_") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs), encoding="utf-8")
        runs_so_far = itertools.count()

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
        seconds, tokens = interleaved(runs, args.repeats, device)
    assert tokens["pool"] == tokens["loop"], f"fineweb.py wrote {tokens['pool']} tokens, the loop counted {tokens['loop']}"
    figures = {f"{name}_tokens_per_s": tokens["loop"] / s for name, s in seconds.items()}
    figures["ratio"] = figures["pool_tokens_per_s"] / figures["loop_tokens_per_s"]
    if "ceiling" in seconds:
        figures["ceiling_ratio"] = figures["ceiling_tokens_per_s"] / figures["loop_tokens_per_s"]
    figures.update(tokens=tokens["loop"], documents=len(docs), num_proc=args.num_proc)
    return figures


# -----------------------------------------------------------------------------
# the report


def machine(device, load_at_start):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):  # Linux names the CPU model here; elsewhere the architecture will do
            name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return {"device": str(device), "name": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            # other processes on the cores slow every figure, CPU ones most (torch's threads wait on each
            # other); at the start it counts only them, at the end this run too
            "load_at_start": load_at_start, "load_at_end": load_average()}


def load_average():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # runnable processes, last minute


def si(x, unit):
    """3 significant digits with a k/M/G/T prefix: 2,310 -> '2.31k tok/s'."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix} {unit}"
    return f"{x:.3g} {unit}"


def table_rows(results, args, bf16):
    rows = []
    if r := results.get("train"):
        rows.append(("train step", si(r["ours_tokens_per_s"], "tok/s"), si(r["hf_tokens_per_s"], "tok/s") + " (HF)", r["ratio"],
                     f"MFU {100 * r['ours_mfu']:.2f}% vs {100 * r['hf_mfu']:.2f}% of {si(r['peak_flops'], 'FLOP/s')} "
                     f"({results['peak']['mfu_source']})"))
    if r := results.get("generate"):
        rows.append(("generate", si(r["cache_tokens_per_s"], "tok/s") + " (KV cache)", si(r["no_cache_tokens_per_s"], "tok/s") + " (no cache)",
                     r["ratio"], f"{args.generate_model} dims, {args.new_tokens} new tokens, batch 1, " + same_tokens_note(r, bf16)))
    if r := results.get("hellaswag"):
        rows.append(("hellaswag", si(r["batched_examples_per_s"], "ex/s") + f" ({args.hellaswag_batch}/forward)",
                     si(r["reference_examples_per_s"], "ex/s") + " (1/forward, all logits)", r["ratio"],
                     f"{r['n']} val examples; ours at 1/forward: {si(r['single_examples_per_s'], 'ex/s')}; " + same_counts_note(r, bf16)))
    if r := results.get("fineweb"):
        rows.append(("fineweb", si(r["pool_tokens_per_s"], "tok/s") + f" ({r['num_proc']} proc)", si(r["loop_tokens_per_s"], "tok/s") + " (loop)",
                     r["ratio"], f"{r['documents']:,} documents, {r['tokens']:,} tokens"
                     + (f"; {r['num_proc']} loops side by side, the cores' ceiling: {r['ceiling_ratio']:.2f}x" if "ceiling_ratio" in r else "")))
    if r := results.get("peak"):
        rows.append(("matmul peak", si(r["bf16_flops"], "FLOP/s") + " (bf16)", si(r["fp32_flops"], "FLOP/s") + " (fp32)",
                     r["bf16_flops"] / r["fp32_flops"], f"{args.matmul_size}^3, measured"))
    return [(name, ours, base, f"{ratio:.2f}x", notes) for name, ours, base, ratio, notes in rows]


def same_tokens_note(r, bf16):
    if r["same_tokens"]:
        return "same tokens"
    if bf16:
        return f"same first {r['agreeing_tokens']} tokens (bf16 rounds the two paths differently)"
    return f"WARNING: the tokens differ from new token {r['agreeing_tokens']} on"


def same_counts_note(r, bf16):
    if r["same_counts"]:
        return "same counts"
    why = " (bf16 rounds the shapes differently)" if bf16 else ""
    return f"WARNING: acc_norm {r['batched_acc_norm']:.4f} batched, {r['single_acc_norm']:.4f} one by one, {r['reference_acc_norm']:.4f} reference{why}"


def print_table(rows):
    header = ("benchmark", "ours", "baseline", "ratio", "notes")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " | " + row[-1])


# -----------------------------------------------------------------------------
# the command line


def offline_fallback(usual, shared_name, filename):
    """The usual folder when it holds filename, else ../shared/data/<shared_name> when that does; else the
    usual one (whose loader downloads into it, or says what is missing)."""
    if not (Path(usual) / filename).exists() and (SHARED_DATA / shared_name / filename).exists():
        return SHARED_DATA / shared_name
    return Path(usual)


def benchmark_list(value):
    names = value.split(",")
    if unknown := [n for n in names if n not in BENCHMARKS]:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown)}: choose from {','.join(BENCHMARKS)}")
    return names


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=benchmark_list, default=BENCHMARKS, help=f"comma-separated benchmarks to run (default: {','.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help=f"tiny settings for a smoke test, under any flag given: {QUICK}")
    parser.add_argument("--device", default="auto", type=device_name, help="auto picks cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto = bfloat16 autocast where the device supports it, else float32 (default: auto)")
    parser.add_argument("--model", choices=list(MODEL_PRESETS), help="architecture preset (default: mini on CPU, gpt2 on GPU)")
    parser.add_argument("--n_layer", type=int, help="number of layers (default: the preset's)")
    parser.add_argument("--n_head", type=int, help="number of attention heads (default: the preset's)")
    parser.add_argument("--n_embd", type=int, help="embedding width (default: the preset's)")
    parser.add_argument("--batch_size", type=int, help="B of the train step (default: 8 on CPU, 16 on GPU: raise it to fill a GPU)")
    parser.add_argument("--seq_len", type=int, help="T of the train step (default: the preset's block_size, 256 for mini, 1024 for gpt2)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile our GPT in the train benchmark (default: on)")
    parser.add_argument("--repeats", type=int, help="timed runs of each side, median reported; generate and hellaswag take half, rounded up (default: 5 on CPU, 10 on GPU)")
    parser.add_argument("--matmul_size", type=int, help="n of the n^3 matmul that measures the peak (default: 2048 on CPU, 8192 on GPU)")
    parser.add_argument("--generate_model", choices=list(MODEL_PRESETS), help="architecture preset of the generate benchmark (default: gpt2, as sampled with sample.py)")
    parser.add_argument("--new_tokens", type=int, help="tokens to generate (default: 256)")
    parser.add_argument("--hellaswag_n", type=int, help="the first N HellaSwag val examples (default: 100)")
    parser.add_argument("--hellaswag_batch", type=int, help="examples per forward of the batched side (default: 16)")
    parser.add_argument("--hellaswag_dir", help="folder holding hellaswag_val.jsonl (default: hellaswag/ beside hellaswag.py, "
                                                "else ../shared/data/hellaswag if it holds the file, else downloaded into the first)")
    parser.add_argument("--fineweb_docs", type=int, help="documents of ~1,300 tokens to tokenize (default: 12000, about 15M tokens)")
    parser.add_argument("--text", help="text cut into those documents (default: tinyshakespeare/input.txt beside fineweb.py, "
                                       "else ../shared/data/tinyshakespeare/input.txt)")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help=f"fineweb.py's --num_proc (default: all {os.cpu_count()} cores)")
    parser.add_argument("--seed", type=int, default=1337, help="seed for weights, batches, prompt and documents (default: 1337)")
    args = parser.parse_args(argv)

    args.device = pick_device(args.device, 0)
    tiers = ([QUICK] if args.quick else []) + [PER_DEVICE["cuda" if args.device.type == "cuda" else "cpu"], ALL]
    for name in vars(args):
        if getattr(args, name) is None:
            setattr(args, name, next((tier[name] for tier in tiers if name in tier), None))
    for name in ("n_layer", "n_head", "n_embd", "batch_size", "seq_len", "repeats", "matmul_size", "new_tokens",
                 "hellaswag_n", "hellaswag_batch", "fineweb_docs", "num_proc"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.model_config = make_model_config(args)  # the same flags as train_gpt2.py's, the same model
    if args.model_config.n_embd % args.model_config.n_head:
        parser.error(f"--n_embd {args.model_config.n_embd} is not divisible by --n_head {args.model_config.n_head}")
    args.seq_len = args.seq_len or args.model_config.block_size
    if args.seq_len > args.model_config.block_size:
        parser.error(f"--seq_len {args.seq_len} exceeds the {args.model} block_size of {args.model_config.block_size}")
    return args


def main(argv=None):
    t_start, load_at_start = time.perf_counter(), load_average()
    args = parse_args(argv)
    # tiktoken's GPT-2 files: without a cache folder set, use the offline copy beside the checkout if there is one
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED_DATA / "tiktoken_cache").is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED_DATA / "tiktoken_cache")
    device = args.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, as train_gpt2.py does
    bf16 = use_bf16(args.dtype, device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    c = args.model_config
    print(f"{args.model} dims ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide), B={args.batch_size}, T={args.seq_len}, "
          f"{'bfloat16 autocast' if bf16 else 'float32'}, compile {'on' if args.compile else 'off'}, {device}, "
          f"{args.repeats} timed runs per side", flush=True)

    results = {}
    step = iter(range(1, len(args.only) + 2))
    print(f"[{next(step)}/{len(args.only) + 1}] matmul peak: {args.matmul_size}^3 in bf16 and fp32", flush=True)
    results["peak"] = bench_matmul(args.matmul_size, device, args.repeats)
    # the MFU denominator: the datasheet peak where we know the GPU, else the matmul timed among the train steps
    datasheet = peak_flops(device) if bf16 else None
    results["peak"]["mfu_source"] = f"{'bf16' if bf16 else 'fp32'} {'datasheet' if datasheet else 'matmul timed between the steps'}"

    # eager models with room for every generated token (no sliding window): the train dims for HellaSwag,
    # and --generate_model (GPT-2 124M unless told) for generation, as sample.py is used
    def eager_model(dims):
        torch.manual_seed(args.seed)
        return decisive(GPT(GPTConfig(**{**dims, "block_size": max(1024, PROMPT_TOKENS + args.new_tokens)}))).to(device).eval()

    for name in args.only:
        print(f"[{next(step)}/{len(args.only) + 1}] {name}", flush=True)
        if name == "train":
            results[name] = bench_train(args, c, device, autocast, bf16, datasheet)
        elif name == "generate":
            results[name] = bench_generate(args, eager_model({**MODEL_PRESETS[args.generate_model], "vocab_size": PADDED_VOCAB_SIZE}), device, autocast)
        elif name == "hellaswag":
            results[name] = bench_hellaswag(args, eager_model(vars(c)), device, autocast)
        elif name == "fineweb":
            results[name] = bench_fineweb(args, device)

    print()
    print_table(table_rows(results, args, bf16))
    info = machine(device, load_at_start)
    load = f", load average {info['load_at_start']:.1f} at the start, {info['load_at_end']:.1f} at the end" if load_at_start is not None else ""
    print(f"\n{info['name']} ({info['device']}), {info['cores']} cores ({info['torch_threads']} torch threads){load}, "
          f"torch {info['torch']}, Python {info['python']}, {info['date']}")
    config = {"model": args.model, **vars(c), "batch_size": args.batch_size, "seq_len": args.seq_len, "bf16": bf16,
              "compile": args.compile, "repeats": args.repeats}
    print(json.dumps({"machine": info, "config": config, **results, "wall_s": time.perf_counter() - t_start}))


if __name__ == "__main__":
    main()
