"""
How fast a run goes and how far it gets: the step line's elapsed time and eta, MFU, `--plan` (the run's own setup and
first steps, timed; a plan printed, nothing written) and `--time_budget` (a run that sizes itself to a budget).

A budgeted run's horizon, cfg.max_steps (its last step, which the learning-rate schedule reads), is the largest whose
optimizer steps and jobs (evaluations, HellaSwag, samples, checkpoints at their intervals, then the final ones) fit
in the budget left, at the pace measured so far. It moves only while the schedule does not read it, so the learning
rate never jumps:
- planned again after every step while the next step's lr is the same for any horizon (the warmup; --schedule wsd's
  flat phase), and fixed at the first step whose lr would depend on it (wsd: where its decay starts);
- --schedule cosine is corrected once more, a quarter of the way in: the cosine's start (cfg.warmup_steps, then in the
  past) moves so that the schedule's progress at that step is kept and it ends at the new horizon. The lr goes on
  from its value, decaying a little faster or slower.
Under torchrun every rank follows rank 0's plan. A checkpoint holds the plan and the training time spent, which a
resume continues (the time between the two processes does not count): once fixed, a resume is bitwise as any other.
"""

import dataclasses
import math
import re
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

import checkpoint
import hardware
from cli import InputError
from plot import hours

JOBS = ("val", "hella", "sample", "checkpoint")  # the jobs train()'s periodic_work schedules between steps
DISK_BYTES_PER_SECOND = 200e6  # a checkpoint's write until one is timed: a slow disk's, so as not to overrun
TOKENS_PER_PARAMETER = 20  # compute-optimal, Hoffmann et al. 2022 (who count every parameter)
JOB_NAMES = dict(val="evaluation", hella="HellaSwag", sample="sample", checkpoint="checkpoint")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)"


def duration(text):
    """argparse type of --time_budget: 11h, 90m, 1.5h, 1h30m, 45s (a bare number: seconds) -> seconds."""
    text = text.strip().lower().replace(" ", "")
    if not re.fullmatch(f"(?:{DURATION})+", text):
        raise ValueError(f"{text!r} is not a duration such as 11h, 90m, 1.5h or 1h30m")
    seconds = sum(float(number) * UNITS[unit or "s"] for number, unit in re.findall(DURATION, text))
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time: give a positive duration such as 90m")
    return seconds


def size(n_bytes):
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def multiples(n, first, last, zero=True):
    """How many steps in [first, last] are multiples of n (none for n = 0); zero=False: step 0 is not one."""
    if not n or last < first:
        return 0
    return last // n - (first - 1) // n - (not zero and first <= 0)


class PlanReady(Exception):
    """--plan has timed what it needs: main prints the report and exits 0."""

    def __init__(self, pace):
        super().__init__("--plan: timed")
        self.pace = pace


class Pace:
    """A run's clock: made by train() first, started before anything is written and the first step (a budget counts the
    training loop's time, from here: not the setup before it, of this process or of a resumed one), told of every step
    by step_done()."""

    def __init__(self, cfg, resumed, get_lr):
        self.cfg, self.get_lr, self.created = cfg, get_lr, time.perf_counter()
        self.budget, self.spent_before, self.fixed, self.corrected = cfg.time_budget, 0.0, False, False
        self.budgeted = cfg.time_budget is not None and not cfg.plan  # --plan only asks what a budget would fit
        self.step_seconds, self.blocks, self.priors = deque(maxlen=20), deque(maxlen=100), {}
        self.started = self.mark = self.created  # start() starts the clock again, after the setup
        self.first_step, self.dts, self.probed = None, [], False
        self.start_step, self.most = (resumed["step"] if resumed is not None else 0), cfg.max_steps
        saved = (resumed or {}).get("pace") or {}
        if saved.get("time_budget"):  # a budgeted run goes on with its plan; --time_budget may change one not fixed
            self.budget, self.budgeted = cfg.time_budget or saved["time_budget"], True
            self.spent_before, self.fixed, self.corrected = saved["spent"], saved["fixed"], saved["corrected"]
            cfg.max_steps, cfg.warmup_steps, self.most = saved["max_steps"], saved["warmup_steps"], saved["most"]

    def state_dict(self):
        """What a checkpoint keeps of the plan (None without a budget)."""
        if not self.budgeted:
            return None
        steps = dict(max_steps=self.cfg.max_steps, warmup_steps=self.cfg.warmup_steps, most=self.most)
        return dict(time_budget=self.budget, spent=self.spent(), fixed=self.fixed, corrected=self.corrected, **steps)

    def spent(self):
        """Seconds this run has trained, its earlier processes' included."""
        return self.spent_before + time.perf_counter() - self.started

    def start(self, model, state, autocast, val_seqs):
        """Before the first step, before anything is written: what MFU and the plan need; with --time_budget a
        micro-step timed twice (the first may allocate), a first plan from it, and a budget too short refused."""
        self.model, self.state, self.autocast, self.val_seqs = model, state, autocast, val_seqs
        raw, loader, cfg = state.model, state.train_loader, self.cfg
        self.B, self.T, self.world_size = loader.B, loader.T, loader.world_size
        self.device = next(raw.parameters()).device
        self.flops_per_token = raw.flops_per_token(self.T)  # counted once: it walks every parameter
        self.grad_accum = cfg.total_batch_size // (self.B * self.T * self.world_size)
        if self.budgeted:
            for _ in range(2):
                t0 = time.perf_counter()
                hardware.step_runs(model, self.B, self.T, self.device, autocast, ())
            micro = time.perf_counter() - t0  # a forward and backward of B sequences; a forward is about a third
            sequences = dict(val=val_seqs / self.world_size, hella=0, sample=4 * 32 / self.T)
            self.priors = {job: micro / 3 * n / self.B for job, n in sequences.items()}
            self.priors["checkpoint"] = 12 * raw.num_params() / DISK_BYTES_PER_SECOND  # weights, AdamW's moments
            self.step_seconds.append(micro * self.grad_accum)
            self.probed = True
            needs = self.seconds_for(self.start_step - 1, self.start_step + 1)
            if self.budget < needs and self.start_step == 0:
                raise InputError(
                    f"--time_budget {hours(self.budget)} is too short for one step, the evaluations before and after"
                    f" it and a checkpoint here (about {needs:.1f} s, timed): give at least {math.ceil(needs)}s"
                )
        self.started = self.mark = time.perf_counter()  # the budget's clock, and the first step's jobs', start here
        if self.budgeted and not self.fixed:
            self.cfg.max_steps = self.plan(self.start_step - 1)

    # -- measuring
    def step_done(self, step, due, t0, dt):
        """After optimizer step `step`, which began at t0 and took dt: the step and the jobs before it (`due`, from
        the last call to t0) timed; --plan stops once it has timed enough; with --time_budget the horizon is planned
        again while it may move. Returns the horizon, cfg.max_steps."""
        now = time.perf_counter()
        jobs = t0 - self.mark if due else 0.0
        if due:
            self.blocks.append(([job in due for job in JOBS], jobs))
        if self.first_step is None:
            self.first_step = now - self.mark - jobs  # it compiles the optimizer step, allocates: left out of the pace
        else:
            if self.probed:
                self.step_seconds.clear()  # the probe's guess gives way to a measured step
                self.probed = False
            self.step_seconds.append(now - self.mark - jobs)
            self.dts.append(dt)
        self.mark = now
        if self.cfg.plan:
            if self.agree(step >= len(JOBS) and (len(self.dts) >= 5 or sum(self.dts) > 20)):
                raise PlanReady(self)
        elif self.budgeted and not (self.fixed and (self.corrected or self.cfg.schedule != "cosine")):
            self.replan(step)
        return self.cfg.max_steps

    def agree(self, value):
        """Rank 0's value (a number), on every rank."""
        if not torch.distributed.is_initialized():
            return value
        tensor = torch.tensor(float(value), device=self.device)
        torch.distributed.broadcast(tensor, 0)
        return type(value)(tensor.item())

    def job_seconds(self):
        """Each job's seconds: least squares over the timed blocks of jobs (jobs always timed together share their
        sum), else the probe's guess."""
        costs = dict(self.priors)
        if self.blocks:
            which = np.array([kinds for kinds, _ in self.blocks], dtype=float)
            seconds = np.array([s for _, s in self.blocks])
            timed = which.any(axis=0)
            solution = np.linalg.lstsq(which[:, timed], seconds, rcond=None)[0]
            costs |= {job: max(0.0, x) for job, x in zip(np.array(JOBS)[timed], solution, strict=True)}
        return costs

    # -- planning
    def job_counts(self, step, horizon):
        """How many of each job run after optimizer step `step` in a run whose last step is `horizon`: those at their
        intervals and the final ones (periodic_work's rules)."""
        cfg, first, last = self.cfg, step + 1, horizon - 1
        return dict(
            val=multiples(cfg.eval_interval, first, last) + 1,
            hella=multiples(cfg.hellaswag_interval, first, last) + bool(cfg.hellaswag_interval),
            sample=multiples(cfg.sample_interval, first, last, zero=False),
            checkpoint=multiples(cfg.checkpoint_interval, first, last, zero=False) + 1,
        )

    def seconds_for(self, step, horizon):
        """Seconds from the end of optimizer step `step` to the end of a run whose last step is `horizon`."""
        costs = self.job_seconds()
        jobs = sum(n * costs.get(job, 0.0) for job, n in self.job_counts(step, horizon).items())
        return (horizon - step - 1) * self.mean_step() + jobs

    def mean_step(self):
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else self.first_step

    def steps_that_fit(self, step, seconds):
        """The largest horizon after `step` whose rest fits in `seconds`; step + 1 if none does."""
        low, high = step + 1, step + 2
        while self.seconds_for(step, high) <= seconds:
            low, high = high, 2 * high - step
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.seconds_for(step, middle) <= seconds else (low, middle)
        return low

    def plan(self, step):
        """The horizon that fits in the budget left after `step`, at most --max_steps, rank 0's on every rank."""
        left = self.budget - self.spent() - 2 * self.mean_step()  # two steps held back: the pace varies a little
        return self.agree(min(self.most, self.steps_that_fit(step, left)))

    def reads_horizon(self, step, horizon):
        """Whether the lr of `step` in a run of `horizon` steps differs from the lr in a longer one."""
        lr = lambda steps: self.get_lr(step, dataclasses.replace(self.cfg, max_steps=steps))
        return lr(horizon) != lr(2 * horizon + step)

    def replan(self, step):
        cfg, next_step = self.cfg, step + 1
        if not self.fixed:
            horizon = self.plan(step)
            while self.reads_horizon(step, horizon):  # too short for the lr this step had: the plan comes too late
                horizon += 1
            cfg.max_steps, self.fixed = horizon, self.reads_horizon(next_step, horizon)
        elif next_step >= cfg.max_steps / 4:  # cosine, once: a new horizon, the start that keeps the progress
            old, start, new = cfg.max_steps, cfg.warmup_steps, self.plan(step)
            if new > next_step:
                progress = (next_step - start) / (old - start)
                cfg.warmup_steps = (next_step - progress * new) / (1 - progress)
            cfg.max_steps, self.corrected = new, True

    # -- saying it
    def mfu(self, tok_per_sec):
        """Model FLOPs utilization of this process at tok_per_sec (the whole run's), None where no peak is known."""
        return hardware.mfu(self.flops_per_token * tok_per_sec / self.world_size, self.device, self.dtype())

    def dtype(self):
        return self.autocast.fast_dtype  # float32 when autocast is off

    def times(self, step):
        """(seconds trained, seconds left or None): with a budget, to its end; else to max_steps at this pace."""
        if self.budgeted:
            return self.spent(), max(0.0, self.budget - self.spent())
        return self.spent(), self.seconds_for(step, self.cfg.max_steps) if self.step_seconds else None

    def note(self):
        """The step line's word on the plan."""
        if not self.budgeted:
            return ""
        state = "corrected" if self.corrected else "fixed" if self.fixed else "planning"
        return f" | plan {self.cfg.max_steps:,} steps ({state})"

    def summary(self, step, val_loss):
        """A run's last line: how far it got, in what time, of what budget."""
        tokens = step * self.cfg.total_batch_size
        of = f" of the {hours(self.budget)} budget" if self.budget else ""
        val = f", val loss {val_loss:.4f}" if val_loss is not None else ""
        return f"trained {step:,} steps, {tokens:,} tokens{val}, in {hours(self.spent())}{of}"

    def report(self, presets):
        """--plan's answer, from what the setup and the first steps timed; presets: architectures to suggest by name."""
        cfg, params = self.cfg, self.state.model.num_params()
        tok_per_sec = cfg.total_batch_size / float(np.median(self.dts))
        setup, first_step = self.started - self.created, self.first_step - self.mean_step()  # the first's extra
        fit = self.steps_that_fit(-1, self.budget - first_step) if self.budget else cfg.max_steps
        steps = min(fit, cfg.max_steps)
        seconds, tokens = first_step + self.seconds_for(-1, steps), steps * cfg.total_batch_size
        costs, counts = self.job_seconds(), self.job_counts(-1, steps)
        timed = ", ".join(f"{JOB_NAMES[job]} {costs[job]:.2f} s" for job in JOBS if job in costs)
        jobs = ", ".join(f"{n:,} x {JOB_NAMES[job]}" for job, n in counts.items() if n and job in costs)
        kept = min(counts["checkpoint"], cfg.keep_checkpoints or counts["checkpoint"])
        data = sum(path.stat().st_size for path in Path(cfg.data_dir).glob("*.npy"))
        length = "--max_steps" if not self.budget else f"--time_budget {hours(self.budget)} fits {fit:,}"
        capped = "; --max_steps caps it" if fit > steps else ""
        optimal = f"about {TOKENS_PER_PARAMETER} is compute-optimal (Hoffmann et al. 2022)"
        split = f"{self.B} x {self.T} x {self.world_size} process(es) x {self.grad_accum} accumulation steps"
        lines = [
            f"plan: {self.device}, {str(self.dtype())[6:]}, {cfg.total_batch_size:,} tokens a step = {split}",
            f"  pace      {tok_per_sec:,.0f} tok/s over {len(self.dts)} steps; MFU {self.mfu_text(tok_per_sec)}",
            f"  start-up  {setup:.1f} s before the first step: the data's checks, the model, compile (not in a budget)",
            f"  jobs      {timed} (each timed once; the checkpoint serialized in memory, not written)",
            f"  the run   {steps:,} steps ({length}{capped}), {tokens:,} tokens",
            f"            {hours(seconds)} of training with {jobs} ({self.mean_step():.3f} s a step with its logging)",
            f"  scale     {tokens / params:.1f} tokens per parameter ({params / 1e6:.1f}M parameters), {optimal}",
            self.better_shape(tokens, presets),
            f"  disk      {kept} checkpoint(s) of {size(self.checkpoint_bytes())}, beside {size(data)} of token shards",
        ]
        if cfg.warmup_steps > steps / 3:
            lines += [
                f"  warmup    --warmup_steps {cfg.warmup_steps} is over a third of the run: try {steps // 10 or 1}"
            ]
        if cfg.gpu_price:
            cost = cfg.gpu_price * self.world_size * (setup + seconds) / 3600
            lines += [f"  cost      {cost:,.2f} at {cfg.gpu_price:g} an hour for each of {self.world_size} process(es)"]
        return "\n".join(line for line in lines if line)

    def mfu_text(self, tok_per_sec):
        """The plan's MFU, or why there is none."""
        if (mfu := self.mfu(tok_per_sec)) is not None:
            peak = hardware.peak_flops(self.device, self.dtype())
            return f"{mfu:.1%} of the {str(self.dtype())[6:]} tensor-core peak, {peak / 1e12:g} TFLOP/s (datasheet)"
        if self.device.type != "cuda":
            return f"n/a (no peak FLOP/s known for {self.device.type})"
        if self.dtype() == torch.float32:
            return "n/a (float32: MFU is measured against a bf16 or fp16 tensor-core peak)"
        name = torch.cuda.get_device_name(self.device)
        return f"n/a ({name} is not in hardware.GPU_PEAK_FLOPS: its datasheet's dense peak can be added)"

    def better_shape(self, tokens, presets):
        """Where this model is more than twice from TOKENS_PER_PARAMETER: the preset, or the width at this depth and
        head size, closest to it in the same time (the tokens scaled by FLOPs per token: an estimate)."""
        raw = self.state.model
        if 0.5 <= tokens / raw.num_params() / TOKENS_PER_PARAMETER <= 2:
            return ""
        head, config = raw.config.n_embd // raw.config.n_head, raw.config
        shapes = {
            f"--model {name}": shape for name, shape in presets.items() if shape.get("block_size", self.T) >= self.T
        }
        shapes |= {
            f"--n_embd {w} --n_head {w // head}": dict(n_embd=w, n_head=w // head) for w in range(head, 2049, head)
        }
        fits = []
        for flags, shape in shapes.items():
            with torch.device("meta"):
                model = type(raw)(dataclasses.replace(config, **shape))
            n, t = model.num_params(), tokens * self.flops_per_token / model.flops_per_token(self.T)
            fits.append((abs(math.log(t / n / TOKENS_PER_PARAMETER)), flags, n, t))
        _, flags, n, t = min(fits)
        return (
            f"            closer in the same time: {flags}, {n / 1e6:.1f}M parameters, ~{t / n:.0f} tokens each"
            " (an estimate)"
        )

    def checkpoint_bytes(self):
        """A checkpoint's size: the fp32 weights (a tied head once) and the optimizers' state (every shard)."""
        optimizers = [optimizer.state_dict()["state"] for optimizer in self.state.optimizers]
        shards = self.world_size if self.cfg.fsdp else 1
        return 4 * self.state.model.num_params() + checkpoint.tensor_bytes(optimizers) * shards
