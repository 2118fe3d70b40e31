"""
tools/bench.py's time-to-loss benchmark (`python tools/bench.py --only recipes`) and ablation (`--only ablation`):
how many steps --recipe modern needs to reach the val loss that --recipe gpt2 ends with, each run as a budget runs
it, its schedule complete at its last step (--max_steps N, or the N that --time_budget fits).

Both recipes train the model of the flags (--model, --n_embd, --seq_len, --batch_size) on Tiny Shakespeare's GPT-2
tokens, the whole 50,304-row vocabulary, the same sequences in the same order, none twice (at most one epoch: a
faster optimizer would overfit sooner and confound the comparison). Each recipe's learning rates are first scaled by
each factor of its grid (GRIDS) at seed 0, gpt2 over its longest run, modern over BUDGET of it; the best final val
loss chooses the factor (a best at the grid's edge extends the grid by a factor of 2 that way, until it is inside).
Then, for --seeds seeds: gpt2 runs of GPT2_FRACTIONS × --recipe_steps steps and modern runs of MODERN_FRACTIONS ×
--recipe_steps, each scored on the val split at its end. The ratio: the fewest modern steps whose final val loss
reaches the gpt2 recipe's final at --recipe_steps, over --recipe_steps, the mean over seeds. The first-crossing
ratio (the old, flattering sense): the first evaluation inside modern's --recipe_steps run at or below that loss.
"""

import dataclasses
import math
from pathlib import Path

import torch

from tokenizer import gpt2_tokenizer
from train_gpt2 import GPT, PADDED_VOCAB_SIZE, RECIPES, TrainConfig, make_model_config, schedule

GRIDS = {"gpt2": (1, 2, 4), "modern": (0.5, 1, 2)}  # factors of each recipe's learning rates
GPT2_FRACTIONS = (0.5, 1.0)  # of --recipe_steps: gpt2's runs
MODERN_FRACTIONS = (0.2, 0.3, 0.4)  # modern's; and 1.0 at seed 0, for the first crossing
BUDGET = 0.4  # the claim: modern reaches gpt2's loss in this share of its steps; modern's grid runs at it
EVAL_EVERY = 10  # steps between evaluations inside the longest modern run: the first-crossing resolution
VAL_TOKENS, TRAIN_START = 16384, 32768  # the val split first, as fineweb.py writes it, then the train split
LRS = ("max_lr", "muon_lr", "embed_lr")
# what --only ablation turns off in modern, one at a time, and turns on in gpt2 (modern's value)
OFF = dict(rope=False, qk_norm=False, relu2=False, rmsnorm=False, bias=True, tied_head=True, zero_init=False)
OFF |= dict(logit_softcap=0.0, embed_norm=False, split_qkv=False, head_size=None, embed_weight_decay=None)
OFF |= dict(muon_lr=None, muon_weight_decay=0.0, muon_momentum_warmup=0, schedule="cosine")
MUON = ("muon_lr", "embed_lr", "muon_weight_decay", "muon_momentum_warmup")  # what Muon in gpt2 brings along


def shakespeare_tokens(path):
    tokens = torch.tensor([50256, *gpt2_tokenizer().encode_ordinary(Path(path).read_text())])
    return tokens[TRAIN_START:], tokens[: VAL_TOKENS + 1]


def run_config(recipe, flags, steps, args):
    """The TrainConfig of one run: the recipe's defaults, the flags over them, the bench's dims, `steps` steps with a
    warmup as a budgeted run gets it (gpt2: GPT-3's share of the steps; a warmup over a third of the run: a tenth)."""
    cfg = TrainConfig(**RECIPES[recipe])
    dims = {k: getattr(args, k) for k in ("model", "n_layer", "n_head", "n_embd")}
    cfg = dataclasses.replace(cfg, **dims, **flags, max_steps=steps, seq_len=args.seq_len)
    if recipe == "gpt2" and "warmup_steps" not in flags:
        cfg.warmup_steps = max(1, round(steps * 715 / 19073))
    if cfg.warmup_steps > steps / 3:
        cfg.warmup_steps = steps // 10 or 1
    return cfg


def train_run(cfg, seed, data, args, device, autocast, every=None):
    """[(step, val loss)] of one run of cfg.max_steps steps: at its end, and every `every` steps if given."""
    (train, val), B, T = data, args.batch_size, args.seq_len
    order = torch.randperm((len(train) - 1) // T, generator=torch.Generator().manual_seed(1234))  # every run alike
    if cfg.max_steps * B > len(order):
        raise SystemExit(f"{cfg.max_steps} steps of {B} x {T} tokens pass the train split's {len(train):,}: fewer")
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(make_model_config(cfg), vocab_size=PADDED_VOCAB_SIZE)).to(device)
    optimizers = model.configure_optimizers(cfg, device.type)
    groups, curve = [group for optimizer in optimizers for group in optimizer.param_groups], []
    x_val = val[: (len(val) - 1) // T * T + 1]
    for step in range(cfg.max_steps + 1):
        if step == cfg.max_steps or (every and step % every == 0):
            inputs, targets = x_val[:-1].view(-1, T), x_val[1:].view(-1, T)
            with torch.no_grad(), autocast:  # B rows at a time: the logits of all would take gigabytes
                losses = [
                    model(x.to(device), y.to(device))[1] for x, y in zip(inputs.split(B), targets.split(B), strict=True)
                ]
            curve.append((step, torch.stack(losses).mean().item()))
        if step == cfg.max_steps:
            return curve
        rows = order[step * B : (step + 1) * B].tolist()
        x = torch.stack([train[r * T : r * T + T + 1] for r in rows]).to(device)
        for group in groups:  # the loop's own schedule: each group's lr from its peak, Muon's momentum
            group.update(schedule(step, cfg, group))
        with autocast:
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def scaled(recipe, factor):
    """The recipe's learning rates times factor."""
    cfg = TrainConfig(**RECIPES[recipe])
    return {k: getattr(cfg, k) * factor for k in LRS if getattr(cfg, k)}


def bench_recipes(args, device, autocast, dtype):
    data, n = shakespeare_tokens(args.text), args.recipe_steps

    def final(recipe, flags, steps, seed, every=None):
        curve = train_run(run_config(recipe, flags, steps, args), seed, data, args, device, autocast, every)
        print(f"recipes     | {recipe} {flags or ''} {steps} steps, seed {seed}: val {curve[-1][1]:.4f}", flush=True)
        return curve

    figures = {"grid": {}, "runs": {}}
    for recipe, grid in GRIDS.items():
        steps = n if recipe == "gpt2" else round(BUDGET * n)
        curves, factors = {}, list(grid)
        while factors:  # a best factor at the grid's edge: the grid goes on by a factor of 2 that way
            curves |= {factor: final(recipe, scaled(recipe, factor), steps, 0) for factor in factors}
            losses = {factor: curve[-1][1] for factor, curve in sorted(curves.items())}
            best, edges = min(losses, key=losses.get), (min(losses), max(losses))
            factors = [best / 2] if best == edges[0] else [best * 2] if best == edges[1] else []
        figures["grid"][recipe] = {"steps": steps, "losses": losses, "best": best}
        fractions = GPT2_FRACTIONS if recipe == "gpt2" else MODERN_FRACTIONS
        runs = figures["runs"][recipe] = {seed: {} for seed in range(args.seeds)}
        for seed in range(args.seeds):
            for f in fractions + ((1.0,) if recipe == "modern" and seed == 0 else ()):
                steps_f = round(f * n)
                if seed == 0 and steps_f == steps:  # the grid's run at the best factor
                    runs[0][steps_f] = curves[best]
                else:
                    every = EVAL_EVERY if f == 1.0 and recipe == "modern" else None
                    runs[seed][steps_f] = final(recipe, scaled(recipe, best), steps_f, seed, every)
    gpt2, modern = figures["runs"]["gpt2"], figures["runs"]["modern"]
    ratios = []
    for seed in range(args.seeds):
        reached = [steps for steps, curve in sorted(modern[seed].items()) if curve[-1][1] <= gpt2[seed][n][-1][1]]
        ratios.append(reached[0] / n if reached else math.inf)
    crossing = next((step for step, loss in modern[0][n] if loss <= gpt2[0][n][-1][1]), None)
    figures |= {"ratios": ratios, "ratio_mean": sum(ratios) / len(ratios)}
    figures["first_crossing"] = crossing / n if crossing is not None else math.inf
    table = " | ".join(
        f"{recipe} {steps}: " + ", ".join(f"{runs[seed][steps][-1][1]:.3f}" for seed in runs if steps in runs[seed])
        for recipe, runs in figures["runs"].items()
        for steps in sorted(runs[0])
    )
    print(f"recipes     | final val loss by run length, seeds 0..{args.seeds - 1}: {table}")
    print(
        f"recipes     | modern's steps to gpt2's final at {n}, over {n}: {figures['ratio_mean']:.2f} (seeds: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); first crossing inside modern's {n}-step run (seed 0):"
        f" {figures['first_crossing']:.2f}"
    )
    return figures


def bench_ablation(args, device, autocast, dtype):
    """Each switch alone: off in modern, on in gpt2 (modern's value; Muon with its lr, decay and warm-up, the
    embedding at modern's lr), seed 0, runs of BUDGET × --recipe_steps, the recipes' own learning rates. Then where
    modern's lead comes from: gpt2 with Muon and an untied head at modern's lr; modern at gpt2's AdamW lr."""
    data, steps = shakespeare_tokens(args.text), round(BUDGET * args.recipe_steps)
    modern, gpt2 = TrainConfig(**RECIPES["modern"]), TrainConfig(**RECIPES["gpt2"])
    on = {k: {k: getattr(modern, k)} for k in OFF if k not in MUON[2:]}  # Muon's settings: with Muon
    on["muon_lr"] = {k: getattr(modern, k) for k in MUON}
    off = {k: {k: v} for k, v in OFF.items()}
    runs = {f"modern, {name} off": ("modern", flags) for name, flags in {"nothing": {}, **off}.items()}
    runs |= {f"gpt2, {name} on": ("gpt2", flags) for name, flags in {"nothing": {}, **on}.items()}
    untied = dict(tied_head=False, max_lr=modern.max_lr)
    runs["gpt2, Muon and an untied head at modern's lr"] = ("gpt2", on["muon_lr"] | untied)
    runs["modern, gpt2's AdamW lr"] = ("modern", dict(max_lr=gpt2.max_lr, embed_lr=gpt2.max_lr))
    figures = {}
    for name, (recipe, flags) in runs.items():
        figures[name] = train_run(run_config(recipe, flags, steps, args), 0, data, args, device, autocast)[-1][1]
        print(f"ablation    | {name}: val {figures[name]:.4f}", flush=True)
    return figures
