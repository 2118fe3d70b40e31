"""
Training checkpoints: <log_dir>/model_<step:05d>.pt holds the state after `step` optimizer steps, so that a resume
runs step `step` next and reproduces the uninterrupted run. What a checkpoint holds, writing it whole (a temporary
file, then a rename), reading it safely (weights_only), and the resume decision with its refusals.
Nothing here imports a script: train_gpt2.py, sample.py and hellaswag.py read checkpoints through it.
"""

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import torch

from cli import InputError, first_line

RESUMABLE = {"model", "config", "step", "val_loss", "optimizer", "train_loader", "rng"}  # what a resume reads


def checkpoint_paths(log_dir):
    """Complete checkpoints in log_dir, oldest first (temporary files never match)."""
    return sorted(
        (p for p in Path(log_dir).glob("model_*.pt") if re.fullmatch(r"model_\d+\.pt", p.name)), key=checkpoint_step
    )


def checkpoint_step(path):
    return int(path.stem.split("_")[1])


def save_checkpoint(path, state):
    """Write beside the final name, then rename: a crash mid-write never leaves a half file under it. Durable on
    return (the file and the folder's entry synced), so an older checkpoint may then be deleted. A write that fails
    (a full disk, a quota, a permission) removes its temporary file and raises InputError naming what it needed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise InputError(
            f"cannot write checkpoint {path} ({getattr(e, 'strerror', None) or 'the write failed'}): it needs about"
            f" {tensor_bytes(state):,} bytes, {free:,} are free; free some space or choose another --log_dir"
            " (the older checkpoints and log.txt are intact)"
        )


def tensor_bytes(state):
    """The bytes of the tensors in a (nested) checkpoint dict: about its size on disk."""
    if isinstance(state, dict):
        return sum(map(tensor_bytes, state.values()))
    if isinstance(state, list | tuple):
        return sum(map(tensor_bytes, state))
    return state.nbytes if isinstance(state, torch.Tensor) else 0


def load_checkpoint(path, device="cpu"):
    """A checkpoint dict (plain containers and tensors only, so weights_only loading is safe)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many types for a damaged file; any of them means unreadable
        raise InputError(f"checkpoint {path} cannot be loaded ({type(e).__name__}): it is damaged or not a checkpoint")


def load_weights(path, device="cpu"):
    """(path, checkpoint) of a model_*.pt file, or of a log dir's newest; refused unless it holds a model and config."""
    path = Path(path)
    if path.is_dir():
        found = checkpoint_paths(path)
        if not found:
            raise InputError(f"no checkpoint (model_*.pt) in {path}: train one first, or name a checkpoint file")
        path = found[-1]
    elif not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    checkpoint = load_checkpoint(path, device)
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= checkpoint.keys():
        raise InputError(f"{path} is not a train_gpt2.py checkpoint (it has no model and config)")
    return path, checkpoint


@dataclasses.dataclass
class TrainingState:
    """A run's stateful parts, which a checkpoint saves and a resume puts back: the bare model (FSDP-sharded or
    not), its optimizers, float16's gradient scaler, the train loader's place, the run's clock (a --time_budget's
    plan and time spent); and the run's log, whose wandb run a resume continues."""

    model: torch.nn.Module
    optimizers: list
    scaler: torch.amp.GradScaler
    train_loader: object
    pace: object = None
    run_log: object = None


def training_state(step, val_loss, state, device, cfg, keep=True):
    """What a checkpoint holds: what continues the run exactly (restore_training_state's inverse), and notes. The
    state dicts are a single process's, whether or not FSDP sharded the model: every rank calls this, only rank 0
    keeps them (keep=False: each gathered tensor goes to the meta device, dropped at once)."""

    def full(t):  # an FSDP shard (a DTensor) gathered tensor by tensor: an all-gather, which every rank joins
        return t.full_tensor().to("cpu" if keep else "meta") if hasattr(t, "full_tensor") else t

    tied = state.model.config.tied_head
    model_state = {k: full(v) for k, v in state.model.state_dict().items() if not (tied and k == "lm_head.weight")}
    if tied:  # one tensor with wte: gathered and saved once
        model_state["lm_head.weight"] = model_state["transformer.wte.weight"]
    optimizer_states = [optimizer.state_dict() for optimizer in state.optimizers]
    for saved in optimizer_states:
        saved["state"] = {i: {k: full(v) for k, v in s.items()} for i, s in saved["state"].items()}
    wandb_run = state.run_log.wandb_run if state.run_log is not None else None
    return {
        "model": model_state,
        "config": dataclasses.asdict(state.model.config),
        "step": step,
        "val_loss": val_loss,
        "optimizer": optimizer_states,
        "scaler": state.scaler.state_dict(),
        "train_loader": state.train_loader.state_dict(),
        "pace": state.pace.state_dict() if state.pace is not None else None,
        "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
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


def restore_training_state(path, checkpoint, state, device, cfg, log):
    """Put a checkpoint's state back into the new model, optimizers and loader; (step, val_loss). Changed flags are
    named."""
    saved = checkpoint["optimizer"]
    saved = [saved] if isinstance(saved, dict) else saved  # one optimizer's, as written before 2026-12-06
    if len(saved) != len(state.optimizers):
        raise InputError(
            f"{path} cannot be resumed: it holds {len(saved)} optimizers' state, this run has {len(state.optimizers)}"
            " optimizers; resume with the flags it was trained with (its --recipe, --muon_lr). A --recipe modern"
            " checkpoint written before 2026-12-06 only samples and fine-tunes (--init_from)"
        )
    try:
        sharded = state.model.state_dict()
        state.model.load_state_dict({k: like(v, sharded.get(k)) for k, v in checkpoint["model"].items()})
        for optimizer, optimizer_state in zip(state.optimizers, saved, strict=True):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            peaks = [group["initial_lr"] for group in optimizer.param_groups]  # this run's flags': they go on
            moments = {i: {k: like(v, params[i]) for k, v in s.items()} for i, s in optimizer_state["state"].items()}
            optimizer.load_state_dict({**optimizer_state, "state": moments})
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["initial_lr"] = peak
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as e:
        why = first_line(e)
        raise InputError(
            f"{path} cannot be resumed: its weights or optimizer state do not fit its config ({why}); resume with"
            " the flags it was trained with (its --recipe, --muon_lr)"
        )
    if state.scaler.is_enabled() and checkpoint.get("scaler"):  # float16's loss scale; empty from other dtypes' runs
        state.scaler.load_state_dict(checkpoint["scaler"])
    state.train_loader.load_state_dict(checkpoint["train_loader"])
    torch.set_rng_state(checkpoint["rng"]["cpu"])
    if device.type == "cuda" and checkpoint["rng"]["cuda"]:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][device.index % len(checkpoint["rng"]["cuda"])], device)
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


# -----------------------------------------------------------------------------
# Hugging Face's NanoChat: export_hf.py writes a --recipe modern model as one, GPT.from_pretrained reads it back
NANOCHAT_SWITCHES = dict(rope=True, qk_norm=True, relu2=True, rmsnorm=True, bias=False, embed_norm=True)


def flip_rotation(weight, n_head):
    """Our rotary embedding turns each (i, i + hs/2) pair of a query or key one way, transformers' NanoChat the other:
    the second half of each head's query and key rows negated maps one onto the other, and back. Dot products, so
    attention, are unchanged; so is each head's RMS, which both normalize (NanoChat after the rotation, we before)."""
    halves = weight.reshape(n_head, 2, -1, weight.size(-1)).clone()  # (heads, halves, hs / 2, n_embd)
    halves[:, 1] *= -1
    return halves.view_as(weight)


def nanochat_names(config):
    """{our weight's name: NanoChatForCausalLM's} (q, k, v as split_qkv names them)."""
    names = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        names |= {f"{ours}attn.c_{x}.weight": f"{theirs}self_attn.{x}_proj.weight" for x in "qkv"}
        names[f"{ours}attn.c_proj.weight"] = f"{theirs}self_attn.o_proj.weight"
        names |= {
            f"{ours}mlp.c_fc.weight": f"{theirs}mlp.fc1.weight",
            f"{ours}mlp.c_proj.weight": f"{theirs}mlp.fc2.weight",
        }
    return names


def from_nanochat(path, hc, check, model_class, config_class):
    """train_gpt2's GPT (model_class, of config_class) holding a NanoChatForCausalLM folder's weights, whose config
    transformers read as hc: export_hf.nanochat_model's inverse, its config passed to check(config) before the
    weights load. One this GPT cannot compute is refused."""
    rope = hc.rope_parameters or {}
    if not (rope.get("rope_type") == "default" and rope.get("rope_theta") == 10000.0 and hc.hidden_act == "relu2"):
        raise InputError(f"from_pretrained: {path!r} is a NanoChat of other rotary positions or activation ({rope})")
    if (
        hc.num_key_value_heads != hc.num_attention_heads
        or hc.attention_bias
        or hc.intermediate_size != 4 * hc.hidden_size
    ):
        raise InputError(f"from_pretrained: {path!r} is a NanoChat of other shapes than train_gpt2.py's GPT")
    dims = dict(block_size=hc.max_position_embeddings, vocab_size=hc.vocab_size, n_layer=hc.num_hidden_layers)
    dims |= dict(n_head=hc.num_attention_heads, n_embd=hc.hidden_size, tied_head=hc.tie_word_embeddings)
    # split_qkv as NanoChat keeps them; zero_init as --recipe modern has it (it only initializes)
    switches = dict(split_qkv=True, zero_init=True, logit_softcap=hc.final_logit_softcapping or 0.0)
    config = config_class(**dims, **NANOCHAT_SWITCHES, **switches)
    check(config)
    from transformers import NanoChatForCausalLM  # transformers 5: it read the config

    model, state = model_class(config), NanoChatForCausalLM.from_pretrained(path).state_dict()
    with torch.no_grad():
        for ours, theirs in nanochat_names(config).items():
            weight = state[theirs]
            if ours.endswith(("c_q.weight", "c_k.weight")):
                weight = flip_rotation(weight, config.n_head)
            model.get_parameter(ours).copy_(weight)
    return model


# -----------------------------------------------------------------------------
# long runs: one run per log dir, checkpoints every few minutes and on a signal, bounded disk use
def lock_log_dir(log_dir):
    """Create log_dir and hold it for this run: an flock on <log_dir>/train.lock, which the operating system
    releases when the process ends however it ends (kill -9 leaves no stale lock). A second run is refused, naming
    the first. Keep the returned file open for as long as the run lasts."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        lock = open(log_dir / "train.lock", "a+")  # noqa: SIM115  held open until the process ends
    except OSError as e:  # no permission, or under a read-only path such as /proc
        why = e.strerror or e
        raise InputError(f"--log_dir {log_dir} cannot be created ({why}): choose a --log_dir you can write to")
    try:
        import fcntl  # POSIX; on Windows nothing stops two runs on one folder
    except ImportError:
        return lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        raise InputError(f"--log_dir {log_dir} is in use by {holder}: wait for it to end, or choose another --log_dir")
    lock.truncate(0)
    lock.write(f"train_gpt2.py (pid {os.getpid()} on {socket.gethostname()})\n")
    lock.flush()
    return lock


class Interrupted(Exception):
    """Training stopped on a signal after saving the checkpoint at `path`; main exits with 128 + the signal's number."""

    def __init__(self, signum, step, path):
        name = signal.Signals(signum).name
        saved = f"saved {path}; --resume continues exactly" if path else "--plan wrote nothing"
        super().__init__(f"interrupted by {name} at step {step}: {saved}")
        self.signum = signum


class StopSignals:
    """SIGTERM (spot preemption, docker stop, SLURM's scancel, torchrun stopping its workers) and SIGINT (Ctrl-C) ask
    training to stop after the step under way, with a checkpoint. A second Ctrl-C ends the process at once. Installed
    by a script's main(), the handlers only set a flag: train() decides when to act on it."""

    def __init__(self):
        self.signum = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle)

    def handle(self, signum, frame):
        # only a second SIGINT: under torchrun a Ctrl-C reaches each worker once from the terminal and once more, as
        # SIGTERM, from torchrun itself
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = self.signum or signum


class Checkpoints:
    """A run's checkpoints in --log_dir: the one it resumes from (chosen and checked, with check(config, path), before
    anything is written), the lock that keeps a second run out, and when it saves and what it keeps. It saves every
    --checkpoint_interval steps and after the last, where the newest --keep_checkpoints stay; and every
    --checkpoint_minutes and on a signal, a checkpoint that lasts only until the next is on disk. Such a one is
    written after a step, before the next step's evaluations, which a resume from it runs. Any rank's clock or
    signal decides, for every rank alike."""

    def __init__(self, cfg, check, signals, master, device, log):
        self.cfg, self.signals, self.master, self.device, self.log = cfg, signals, master, device, log
        self.path, self.resumed = checkpoint_to_resume(Path(cfg.log_dir), cfg.resume, check, log)
        self.saved_args = saved_args(self.resumed)
        evaluated = self.resumed is not None and self.resumed.get("evaluated", True)
        self.evaluated_step = self.resumed["step"] if evaluated else None  # its evaluations ran before it stopped
        # the time-based or signal checkpoint not yet superseded: this run's, or the one it resumed from
        self.rolling = self.path if self.resumed is not None and not evaluated else None
        self.state, self.lock, self.saved_at = None, None, time.monotonic()

    def start(self, state):
        """Put the resumed checkpoint into `state` (a TrainingState) and hold the log dir for this run (rank 0):
        (the step to run next, the last val loss); (0, None) for a new run."""
        self.state, step, val_loss = state, 0, None
        if self.resumed is not None:
            step, val_loss = restore_training_state(self.path, self.resumed, state, self.device, self.cfg, self.log)
        if self.master and not self.cfg.plan:  # held open until the process ends; --plan writes nothing
            self.lock = lock_log_dir(Path(self.cfg.log_dir))
        return step, val_loss

    def step_done(self, step, val_loss):
        """After optimizer step `step` - 1: on a signal, or --checkpoint_minutes after the last checkpoint, save the
        state (`step`, evaluated=False); a signal then stops the run (Interrupted)."""
        signum, timed = self.poll(step)
        if signum and self.cfg.plan:
            raise Interrupted(signum, step, None)
        if signum or timed:
            path = self.save(step, val_loss, evaluated=False)
        if signum:
            raise Interrupted(signum, step, path)

    def kept(self, step):
        return step == self.cfg.max_steps or (self.cfg.checkpoint_interval and step % self.cfg.checkpoint_interval == 0)

    def poll(self, step):
        """(signal number or 0, whether a time-based checkpoint of the state after `step` steps is due), agreed by
        every rank (a collective under torchrun: the signal may have reached only some of them)."""
        minutes = self.cfg.checkpoint_minutes
        timed = bool(minutes) and time.monotonic() - self.saved_at >= 60 * minutes and not self.kept(step)
        flags = torch.tensor([self.signals.signum if self.signals else 0, timed], device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX)
        return int(flags[0]), bool(flags[1])

    def save(self, step, val_loss, evaluated=True):
        """Every rank gathers the state (under FSDP), rank 0 writes the checkpoint of `step`, then deletes what the
        policy no longer keeps; a failed write ends the run on every rank (the others would wait for rank 0 forever).
        Its path."""
        state = training_state(step, val_loss, self.state, self.device, self.cfg, keep=self.master)
        state["evaluated"] = evaluated
        path, error = Path(self.cfg.log_dir) / f"model_{step:05d}.pt", None
        if self.master and self.cfg.plan:  # timed, not written
            torch.save(state, io.BytesIO())
        elif self.master:
            try:
                save_checkpoint(path, state)
                self.prune(path)
            except InputError as e:
                error = e
        failed = torch.tensor(int(error is not None), device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(failed, torch.distributed.ReduceOp.MAX)
        if failed:
            raise error or InputError(f"rank 0 could not write {path}: see its message")
        self.saved_at = time.monotonic()
        return path

    def prune(self, newest):
        """Delete the time-based checkpoint that `newest` supersedes, and the interval ones past the newest
        --keep_checkpoints; none other (those of another --checkpoint_interval stay)."""
        paths = [p for p in checkpoint_paths(newest.parent) if p != newest]
        doomed = [p for p in paths if p == self.rolling]
        if self.cfg.keep_checkpoints and self.kept(checkpoint_step(newest)):
            kept = [p for p in paths if self.kept(checkpoint_step(p))]
            doomed += kept[: max(0, len(kept) + 1 - self.cfg.keep_checkpoints)]
        for path in doomed:  # one that cannot be deleted (a permission) stays: the run goes on
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.rolling = None if self.kept(checkpoint_step(newest)) else newest
