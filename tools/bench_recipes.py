"""
tools/bench.py's time-to-loss benchmark (`python tools/bench.py --only recipes`): the steps --recipe modern needs to reach the
val loss that --recipe gpt2 ends with, both trained on the same tokens in the same order.

Each recipe's learning rates are first scaled by each factor of its grid (GRIDS) at seed 0, the best final val loss
chooses the factor, then --seeds seeds run at it. Tokens: Tiny Shakespeare's GPT-2 tokens renumbered densely (the
11,707 ids it uses), so that a CPU trains the small model in minutes: the head of 50,304 would be most of the work.
"""

import math
from pathlib import Path

import numpy as np
import torch

from tokenizer import gpt2_tokenizer
from train_gpt2 import GPT, RECIPES, SWITCHES, GPTConfig, TrainConfig, get_lr

# the factors each recipe's learning rates are scaled by, four points each: GPT-2's 6e-4 is tuned for 0.5M-token
# steps of a 124M model, a small model on small steps takes a few times more; modern's defaults are this grid's best
GRIDS = {"gpt2": (1, 2, 4, 8), "modern": (0.25, 0.5, 1, 2)}
EVAL_EVERY = 10  # steps between evaluations: the resolution of "steps to the loss"
VAL_TOKENS = 4096


def dense_tokens(path):
    """[EOT] + the text's GPT-2 tokens, renumbered 0 ... n-1 in order of first use; and n."""
    tokens = np.array([50256, *gpt2_tokenizer().encode_ordinary(path.read_text())])
    _, first, dense = np.unique(tokens, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # the id of each distinct token by where it first appears
    return torch.from_numpy(rank[dense]), len(first)


def train_curve(recipe, factor, seed, data, args, device, autocast):
    """[(step, val loss)] of one run: the recipe's model and optimizer, its schedule over args.recipe_steps."""
    (train, val), vocab, (B, T) = data[0], data[1], (args.batch_size, args.seq_len)
    flags = {**RECIPES[recipe], "max_steps": args.recipe_steps}
    flags["warmup_steps"] = flags.get("warmup_steps", round(args.recipe_steps * 715 / 19073))  # GPT-3's share
    cfg = TrainConfig(**{k: v for k, v in flags.items() if k not in SWITCHES})
    lrs = {k: getattr(cfg, k) and getattr(cfg, k) * factor for k in ("max_lr", "muon_lr", "embed_lr")}
    torch.manual_seed(seed)
    dims = {k: getattr(args.model_config, k) for k in ("block_size", "n_layer", "n_head", "n_embd")}  # not --recipe's
    dims["vocab_size"] = math.ceil(vocab / 64) * 64
    model = GPT(GPTConfig(**{**dims, **{k: v for k, v in flags.items() if k in SWITCHES}})).to(device)
    optimizers = model.configure_optimizers(
        cfg.weight_decay, lrs["max_lr"], device.type, lrs["muon_lr"], lrs["embed_lr"]
    )
    groups, curve = [group for optimizer in optimizers for group in optimizer.param_groups], []
    order = torch.randperm((len(train) - 1) // T, generator=torch.Generator().manual_seed(1234))  # every run alike
    for step in range(args.recipe_steps + 1):
        if step % EVAL_EVERY == 0 or step == args.recipe_steps:
            with torch.no_grad(), autocast:
                x = val[: len(val) // T * T].view(-1, T)
                curve.append((step, model(x[:, :-1].to(device), x[:, 1:].to(device))[1].item()))
        if step == args.recipe_steps:
            return curve
        rows = order[torch.arange(step * B, (step + 1) * B) % len(order)]
        x = torch.stack([train[r * T : r * T + T + 1] for r in rows.tolist()]).to(device)
        for group in groups:  # each from its own peak
            group["lr"] = get_lr(step, cfg, group["initial_lr"])
        with autocast:
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def steps_to(curve, target):
    return next((step for step, loss in curve if loss <= target), None)


def bench_recipes(args, device, autocast, dtype):
    tokens, vocab = dense_tokens(Path(args.text))
    data = ((tokens[32768:], tokens[: VAL_TOKENS + 1]), vocab)  # as fineweb.py splits: val first, then train
    figures = {"grid": {}, "runs": {}}
    for recipe, grid in GRIDS.items():
        curves = {factor: train_curve(recipe, factor, 0, data, args, device, autocast) for factor in grid}
        figures["grid"][recipe] = {factor: curve[-1][1] for factor, curve in curves.items()}
        best = min(grid, key=lambda factor: curves[factor][-1][1])
        more = {seed: train_curve(recipe, best, seed, data, args, device, autocast) for seed in range(1, args.seeds)}
        figures["runs"][recipe] = {"factor": best, "curves": {0: curves[best], **more}}
        grid_text = ", ".join(f"x{factor:g}: {loss:.3f}" for factor, loss in figures["grid"][recipe].items())
        print(f"recipes     | {recipe}: final val loss by lr factor (seed 0): {grid_text}; best x{best:g}", flush=True)
    gpt2, modern = figures["runs"]["gpt2"]["curves"], figures["runs"]["modern"]["curves"]
    reached = {
        seed: (steps_to(gpt2[seed], gpt2[seed][-1][1]), steps_to(modern[seed], gpt2[seed][-1][1])) for seed in gpt2
    }
    ratios = [m / g if m is not None else math.inf for g, m in reached.values()]
    figures |= {
        "steps_to_gpt2_final": reached,
        "ratio_mean": sum(ratios) / len(ratios) if max(ratios) < math.inf else None,
    }
    steps = "; ".join(f"seed {s}: {g} vs {m if m is not None else 'not reached'}" for s, (g, m) in reached.items())
    print(
        f"recipes     | steps to gpt2's final val loss, gpt2 vs modern: {steps}; mean ratio {figures['ratio_mean'] or math.inf:.2f}"
    )
    return figures
