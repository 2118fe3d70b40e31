"""
Training checkpoints: <log_dir>/model_<step:05d>.pt holds the state after `step` optimizer steps, so that a resume
runs step `step` next and reproduces the uninterrupted run. What a checkpoint holds, writing it whole (a temporary
file, then a rename), reading it safely (weights_only), and the resume decision with its refusals.
Nothing here imports a script: train_gpt2.py, sample.py and hellaswag.py read checkpoints through it.
"""

import dataclasses
import os
import re
from pathlib import Path

import torch

from cli import InputError, first_line

RESUMABLE = {"model", "config", "step", "val_loss", "optimizer", "train_loader", "rng"}  # what a resume reads


def checkpoint_paths(log_dir):
    """Complete checkpoints in log_dir, oldest first (temporary files never match)."""
    steps = {p: re.fullmatch(r"model_(\d+)\.pt", p.name) for p in Path(log_dir).glob("model_*.pt")}
    return sorted((p for p, m in steps.items() if m), key=lambda p: int(steps[p].group(1)))


def save_checkpoint(path, state):
    # write beside the final name, then rename: a crash mid-write never leaves a half file under it
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """A checkpoint dict (plain containers and tensors only, so weights_only loading is safe)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many types for a damaged file; any of them means unreadable
        raise InputError(f"checkpoint {path} cannot be loaded ({type(e).__name__}): it is damaged or not a checkpoint")


def training_state(step, val_loss, model, optimizer, scaler, train_loader, device, cfg, wandb_run, keep=True):
    """What a checkpoint holds: what continues the run exactly (restore_training_state's inverse), and notes. The
    state dicts are a single process's, whether or not FSDP sharded the model: every rank calls this, only rank 0
    keeps them (keep=False: each gathered tensor goes to the meta device, dropped at once)."""

    def full(t):  # an FSDP shard (a DTensor) gathered tensor by tensor: an all-gather, which every rank joins
        return t.full_tensor().to("cpu" if keep else "meta") if hasattr(t, "full_tensor") else t

    model_state = {k: full(v) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    model_state["lm_head.weight"] = model_state["transformer.wte.weight"]  # tied to wte: one tensor, saved once
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = {i: {k: full(v) for k, v in s.items()} for i, s in optimizer_state["state"].items()}
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {
        "model": model_state,
        "config": dataclasses.asdict(model.config),
        "step": step,
        "val_loss": val_loss,
        "optimizer": optimizer_state,
        "scaler": scaler.state_dict(),
        "train_loader": train_loader.state_dict(),
        "rng": {"cpu": torch.get_rng_state(), "cuda": cuda_rng},
        "args": dataclasses.asdict(cfg),
        "wandb_run_id": wandb_run.id if wandb_run is not None else None,
    }


def saved_args(checkpoint):
    """The training flags a checkpoint was written with ({} for none, or another program's)."""
    args = checkpoint.get("args") if checkpoint is not None else None
    return args if isinstance(args, dict) else {}


def like(tensor, sharded):
    """FSDP: this rank's shard of a whole tensor, cut as `sharded` is; a plain tensor (and a step count) stays whole."""
    if not hasattr(sharded, "device_mesh") or not tensor.dim():
        return tensor
    mesh, placements = sharded.device_mesh, sharded.placements
    return torch.distributed.tensor.distribute_tensor(tensor.to(sharded.device), mesh, placements, src_data_rank=None)


def restore_training_state(path, checkpoint, model, optimizer, scaler, train_loader, device, local_rank, cfg, log):
    """Put a checkpoint's state back into the new model, optimizer and loader; (step, val_loss). Changed flags are
    named."""
    try:
        sharded, params = model.state_dict(), [p for group in optimizer.param_groups for p in group["params"]]
        model.load_state_dict({k: like(v, sharded.get(k)) for k, v in checkpoint["model"].items()})
        state = {i: {k: like(v, params[i]) for k, v in s.items()} for i, s in checkpoint["optimizer"]["state"].items()}
        optimizer.load_state_dict({**checkpoint["optimizer"], "state": state})
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as e:
        why = first_line(e)
        raise InputError(f"{path} cannot be resumed: its weights or optimizer state do not fit its config ({why})")
    if scaler.is_enabled() and checkpoint.get("scaler"):  # float16's loss scale; empty from other dtypes' runs
        scaler.load_state_dict(checkpoint["scaler"])
    train_loader.load_state_dict(checkpoint["train_loader"])
    torch.set_rng_state(checkpoint["rng"]["cpu"])
    if device.type == "cuda" and checkpoint["rng"]["cuda"]:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][local_rank % len(checkpoint["rng"]["cuda"])], device)
    log(f"resuming from {path} at step {checkpoint['step']}")
    changed = [
        f"--{k} {v} -> {getattr(cfg, k)}"
        for k, v in saved_args(checkpoint).items()
        if k not in ("resume", "log_dir", "init_from") and getattr(cfg, k, v) not in (v, None)
    ]
    if changed:
        log(f"flags changed since that checkpoint, the run goes on with the new values: {', '.join(changed)}")
    return checkpoint["step"], checkpoint["val_loss"]


def checkpoint_to_resume(log_dir, resume, check, log):
    """(path, checkpoint) that the run continues from, or (None, None) for a new run. With --resume, the newest
    checkpoint that loads (damaged ones are named and skipped), its config passed to check(config, path), which may
    refuse it; without --resume, a log dir with checkpoints is refused."""
    if log_dir.exists() and not log_dir.is_dir():
        raise InputError(f"--log_dir {log_dir} is a file, not a folder: choose a new --log_dir")
    found = checkpoint_paths(log_dir)
    if found and not resume:
        raise InputError(
            f"{log_dir} already holds checkpoints: pass --resume to continue that run, or choose a new --log_dir"
        )
    for path in reversed(found):
        try:
            checkpoint = load_checkpoint(path)
        except InputError as e:
            log(f"{e}; trying an older one")
            continue
        if missing := RESUMABLE - (checkpoint.keys() if isinstance(checkpoint, dict) else set()):
            raise InputError(
                f"{path} cannot be resumed: it has no {', '.join(sorted(missing))} (saved for sampling, or by"
                " another program); move it aside, or choose a new --log_dir"
            )
        check(checkpoint["config"], path)
        return path, checkpoint
    if found:
        raise InputError(
            f"none of the checkpoints in {log_dir} loads: move them aside to start over, or choose a new --log_dir"
        )
    if resume:
        log(f"no checkpoint in {log_dir} to resume from: starting a new run")
    return None, None
