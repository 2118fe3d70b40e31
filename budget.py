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
The budget counts the training loop (steps, evaluations, checkpoints), not the setup before it. Under torchrun every
rank follows rank 0's plan. A checkpoint holds the plan and the training time spent, which a resume continues (the
time between the two processes does not count): once fixed, a resume is bitwise as any other.
"""

import argparse
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

JOB_NAMES = dict(val="evaluation", hella="HellaSwag", sample="sample", checkpoint="checkpoint")
JOBS = tuple(JOB_NAMES)  # the jobs train()'s periodic_work schedules between steps
DISK_BYTES_PER_SECOND = 200e6  # a checkpoint's write until one is timed: a slow disk's, so as not to overrun
TOKENS_PER_PARAMETER = 20  # compute-optimal, Hoffmann et al. 2022 (who count every parameter)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)"


def duration(text):
    """argparse type of --time_budget: 11h, 90m, 1.5h, 1h30m, 45s (a bare number: seconds) -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    if compact.startswith("-") or not re.fullmatch(f"(?:{DURATION})+", compact):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 11h, 90m, 1.5h or 1h30m")
    seconds = sum(float(number) * UNITS[unit or "s"] for number, unit in re.findall(DURATION, compact))
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no time: give a positive duration such as 90m")
    return seconds


def size(n_bytes):
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def ratio(x):
    return f"{x:.2g}" if x < 10 else f"{x:,.0f}"


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
    """A run's clock: made by train() first, started by start() before anything is written, told of every step by
    step_done()."""

    def __init__(self, cfg, resumed, get_lr, log):
        self.cfg, self.get_lr, self.log, self.created = cfg, get_lr, log, time.perf_counter()
        self.budget, self.spent_before, self.fixed, self.corrected = cfg.time_budget, 0.0, False, False
        self.budgeted = cfg.time_budget is not None and not cfg.plan  # --plan only asks what a budget would fit
        self.step_seconds, self.blocks, self.priors, self.costs = deque(maxlen=20), deque(maxlen=100), {}, {}
        self.started = self.mark = self.created  # start() starts the clock again, after the setup
        self.first_step, self.dts, self.probed, self.fit = None, [], False, None
        self.start_step, self.most = (resumed["step"] if resumed is not None else 0), cfg.max_steps
        saved = (resumed or {}).get("pace") or {}
        self.spent_before = saved.get("spent", 0.0)
        if saved.get("time_budget"):  # a budgeted run goes on with its plan (a new --time_budget: where it may move)
            self.budget, self.budgeted = cfg.time_budget or saved["time_budget"], True
            self.fixed, self.corrected = saved["fixed"], saved["corrected"]
            cfg.max_steps, cfg.warmup_steps, self.most = saved["max_steps"], saved["warmup_steps"], saved["most"]
        elif resumed is not None and self.budgeted:
            raise InputError(
                "--time_budget plans a run from its start, and this one was started without: resume it without"
                " --time_budget (or start a new run with one)"
            )

    def state_dict(self):
        """What a checkpoint keeps: the time trained, and a budget's plan."""
        steps = dict(max_steps=self.cfg.max_steps, warmup_steps=self.cfg.warmup_steps, most=self.most)
        plan = dict(time_budget=self.budget, fixed=self.fixed, corrected=self.corrected, **steps)
        return dict(spent=self.spent(), **(plan if self.budgeted else {}))

    def spent(self):
        """Seconds this run has trained, its earlier processes' included."""
        return self.spent_before + time.perf_counter() - self.started

    def start(self, model, state, autocast, val_seqs):
        """Before the first step, before anything is written: what MFU and the plan need; with --time_budget a
        micro-step timed twice (the first may allocate), a first plan from it, and a budget too short refused."""
        self.state, self.autocast, raw, loader, cfg = state, autocast, state.model, state.train_loader, self.cfg
        self.B, self.T, self.world_size = loader.B, loader.T, loader.world_size
        self.device = next(raw.parameters()).device
        self.flops_per_token = raw.flops_per_token(self.T)  # counted once: it walks every parameter
        if cfg.plan:  # its steps stop once they have been timed: a horizon past them (the report has --max_steps)
            cfg.max_steps = 2**40
        if self.budgeted:
            for _ in range(2):
                t0 = time.perf_counter()
                hardware.step_runs(model, self.B, self.T, self.device, autocast, ())
            micro = time.perf_counter() - t0  # a forward and backward of B sequences; a forward is about a third
            sequences = dict(val=val_seqs / self.world_size, hella=0, sample=4 * 32 / self.T)
            self.priors = {job: micro / 3 * n / self.B for job, n in sequences.items()}
            self.priors["checkpoint"] = 12 * raw.num_params() / DISK_BYTES_PER_SECOND  # weights, AdamW's moments
            self.costs, self.probed = self.job_seconds(), True
            self.step_seconds.append(micro * cfg.total_batch_size / (self.B * self.T * self.world_size))
            needs = self.agree(self.seconds_for(self.start_step - 1, self.start_step + 1))  # rank 0's: all refuse
            if self.budget < needs and self.start_step == 0:
                raise InputError(
                    f"--time_budget of {self.budget:g} s is too short for one step, the evaluations before and after"
                    f" it and a checkpoint here (about {needs:.1f} s, timed): give at least {math.ceil(needs)}s"
                )
        self.started = self.mark = time.perf_counter()  # the budget's clock, and the first step's jobs', start here
        if self.budgeted and not self.fixed:
            cfg.max_steps = self.held(self.start_step - 1, self.plan(self.start_step - 1))
            if self.start_step == 0 and cfg.warmup_steps > cfg.max_steps / 3:  # the lr would barely decay, if at all
                warmup, cfg.warmup_steps = cfg.warmup_steps, cfg.max_steps // 10 or 1
                fits = f"--time_budget {hours(self.budget)} fits about {cfg.max_steps} steps here"
                self.log(f"{fits}, too few for --warmup_steps {warmup}: warming up over {cfg.warmup_steps}")
            if self.fit > self.most:  # the budget would allow more: the flag wins, and says so once
                self.log(f"--time_budget {hours(self.budget)} fits about {self.fit} steps: --max_steps ends it sooner")

    # -- measuring
    def step_done(self, step, due, t0, dt):
        """After optimizer step `step`, which began at t0 and took dt: the step and the jobs before it (`due`, from
        the last call to t0) timed; --plan stops once it has timed enough; with --time_budget cfg.max_steps, the
        horizon, is planned again while it may move."""
        now = time.perf_counter()
        jobs = t0 - self.mark if due else 0.0
        if due:
            self.blocks.append(([job in due for job in JOBS], jobs))
            self.costs = self.job_seconds()
        if self.first_step is None:
            self.first_step = now - self.mark - jobs  # it compiles the optimizer step, allocates: left out of the pace
        else:
            if self.probed:
                self.step_seconds.clear()  # the probe's guess gives way to a measured step
                self.probed = False
            self.step_seconds.append(now - self.mark - jobs)
            self.dts += [dt] if self.cfg.plan else []
        self.mark = now
        if self.cfg.plan:
            if self.agree(step >= len(JOBS) and (len(self.dts) >= 5 or sum(self.dts) > 20)):
                raise PlanReady(self)
        elif self.budgeted:
            self.replan(step)

    def agree(self, value):
        """Rank 0's value (a number), on every rank."""
        if not torch.distributed.is_initialized():
            return value
        tensor = torch.tensor(float(value), device=self.device)
        torch.distributed.broadcast(tensor, 0)
        return type(value)(tensor.item())

    def job_seconds(self):
        """Each job's seconds: least squares over the timed blocks of jobs (jobs always timed together share their
        sum), else the probe's guess. The first block is left out once its jobs ran again: it compiled the
        evaluation and followed the setup."""
        costs, blocks = dict(self.priors), list(self.blocks)
        if len(blocks) > 1 and any(kinds == blocks[0][0] for kinds, _ in blocks[1:]):
            blocks = blocks[1:]
        if blocks:
            which = np.array([kinds for kinds, _ in blocks], dtype=float)
            seconds = np.array([s for _, s in blocks])
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
        """Seconds from the end of optimizer step `step` to the end of a run whose last step is `horizon`: its steps,
        its jobs, and a checkpoint every --checkpoint_minutes of them."""
        jobs = sum(n * self.costs.get(job, 0.0) for job, n in self.job_counts(step, horizon).items())
        steps = (horizon - step - 1) * self.mean_step()
        timed = steps / (60 * self.cfg.checkpoint_minutes) if self.cfg.checkpoint_minutes else 0
        return steps + jobs + int(timed) * self.costs.get("checkpoint", 0.0)

    def mean_step(self):
        """A step's seconds, its logging included: the median of the last 20 (a time-based checkpoint is no step)."""
        return float(np.median(self.step_seconds)) if self.step_seconds else self.first_step

    def steps_that_fit(self, step, seconds):
        """The largest horizon after `step` whose rest fits in `seconds` less two steps (the pace varies a little);
        step + 1 if none does."""
        seconds -= 2 * self.mean_step()
        low, high = step + 1, step + 2
        while self.seconds_for(step, high) <= seconds:
            low, high = high, 2 * high - step
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.seconds_for(step, middle) <= seconds else (low, middle)
        return low

    def plan(self, step):
        """The horizon that fits in the budget left after `step`, at most --max_steps, rank 0's on every rank."""
        fits = self.steps_that_fit(step, self.budget - self.spent())
        self.fit = self.agree(max(fits, self.start_step + 1))  # one step at least: the refusal let it through
        return min(self.most, self.fit)

    def reads_horizon(self, step, horizon):
        """Whether the lr of `step` in a run of `horizon` steps differs from the lr in a longer one."""
        lr = lambda steps: self.get_lr(step, dataclasses.replace(self.cfg, max_steps=steps))
        return lr(horizon) != lr(2 * horizon + step)

    def held(self, step, horizon):
        """The horizon, or the shortest longer one with which `step`, already run, had its lr: a plan that comes too
        late to shorten the run (the pace fell) holds the lr still."""
        while horizon < self.most and self.reads_horizon(step, horizon):
            horizon += 1
        return horizon

    def replan(self, step):
        """After `step`: the horizon planned again while no step's lr reads it, fixed at the first whose would; a
        cosine's corrected once, a quarter of the way in."""
        cfg, next_step = self.cfg, step + 1
        if not self.fixed:
            cfg.max_steps = self.held(step, self.plan(step))
            self.fixed = self.reads_horizon(next_step, cfg.max_steps)
        elif cfg.schedule == "cosine" and not self.corrected and next_step >= cfg.max_steps / 4:
            old, start, new = cfg.max_steps, cfg.warmup_steps, self.plan(step)
            progress = (next_step - start) / max(old - start, 1)
            if progress >= 1:  # the cosine has ended (a loaded machine: a quarter came late): it stays so
                new = old
            elif new > next_step:  # the cosine's start moved so that its progress at next_step is kept
                cfg.warmup_steps = (next_step - progress * new) / (1 - progress)
            cfg.max_steps, self.corrected = new, True

    # -- saying it
    def mfu(self, tok_per_sec):
        """Model FLOPs utilization of this process at tok_per_sec (the whole run's), None where no peak is known."""
        return hardware.mfu(self.flops_per_token * tok_per_sec / self.world_size, self.device, self.dtype())

    def dtype(self):
        return self.autocast.fast_dtype  # float32 when autocast is off

    def times(self, step):
        """(seconds trained, seconds left or None): with a budget, to its end; else to the last step at this pace."""
        if self.budgeted:
            return self.spent(), max(0.0, self.budget - self.spent())
        known = self.step_seconds and not self.cfg.plan
        return self.spent(), self.seconds_for(step, self.cfg.max_steps) if known else None

    def note(self):
        """The step line's word on the plan."""
        if not self.budgeted:
            return ""
        state = "corrected" if self.corrected else "fixed" if self.fixed else "planning"
        return f" | plan {self.cfg.max_steps:,} steps ({state})"

    def summary(self, step, val_loss):
        """A run's last line: how far it got, in what time, of what budget."""
        tokens = step * self.cfg.total_batch_size
        of = f" of the {hours(self.budget)} budget" if self.budgeted else ""
        val = f", val loss {val_loss:.4f}" if val_loss is not None else ""
        return f"trained {step:,} steps, {tokens:,} tokens{val}, in {hours(self.spent())}{of}"

    def report(self, presets):
        """--plan's answer, from what the setup and the first steps timed; presets: architectures to suggest by name."""
        cfg, params = self.cfg, self.state.model.num_params()
        tok_per_sec = cfg.total_batch_size / float(np.median(self.dts))
        setup, first_step = self.started - self.created, self.first_step - self.mean_step()  # the first's extra
        self.fit = self.steps_that_fit(-1, self.budget - first_step) if self.budget else self.most
        steps = max(1, min(self.fit, self.most))
        seconds, tokens = first_step + self.seconds_for(-1, steps), steps * cfg.total_batch_size
        counts = self.job_counts(-1, steps)
        timed = ", ".join(f"{JOB_NAMES[job]} {self.costs[job]:.2f} s" for job in JOBS if job in self.costs)
        jobs = ", ".join(f"{n:,} x {JOB_NAMES[job]}" for job, n in counts.items() if n and job in self.costs)
        kept = min(counts["checkpoint"], cfg.keep_checkpoints or counts["checkpoint"])
        data = sum(path.stat().st_size for path in Path(cfg.data_dir).glob("*.npy"))
        length = f"what --time_budget {hours(self.budget)} fits" if self.budget else "--max_steps"
        length = f"--max_steps; --time_budget {hours(self.budget)} fits {self.fit:,}" if self.fit > steps else length
        optimal = f"about {TOKENS_PER_PARAMETER} is compute-optimal (Hoffmann et al. 2022)"
        lines = [
            f"plan: {self.device}, {str(self.dtype())[6:]}, {cfg.total_batch_size:,} tokens a step",
            f"  pace      {tok_per_sec:,.0f} tok/s over {len(self.dts)} steps; MFU {self.mfu_text(tok_per_sec)}",
            f"  start-up  {setup:.1f} s before the first step: the data's checks, the model, compile (not in a budget)",
            f"  jobs      {timed} (each timed once; the checkpoint serialized in memory, not written)",
            f"  the run   {steps:,} steps ({length}), {tokens:,} tokens",
            f"            {hours(seconds)} of training with {jobs} ({self.mean_step():.3f} s a step with its logging)",
            f"  scale     {ratio(tokens / params)} tokens per parameter ({params / 1e6:.1f}M parameters), {optimal}",
            self.better_shape(tokens, presets),
            f"  disk      {kept} checkpoint(s) of {size(self.checkpoint_bytes())}, beside {size(data)} of token shards",
        ]
        if self.fit < 1:
            lines += [
                f"  warning   --time_budget {hours(self.budget)} is too short here for one step and its evaluations"
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
        widths = range(head, 2049, head)
        shapes |= {f"--n_embd {w} --n_head {w // head}": dict(n_embd=w, n_head=w // head) for w in widths}
        fits = []
        for flags, shape in shapes.items():
            with torch.device("meta"):
                model = type(raw)(dataclasses.replace(config, **shape))
            n, t = model.num_params(), tokens * self.flops_per_token / model.flops_per_token(self.T)
            fits.append((abs(math.log(t / n / TOKENS_PER_PARAMETER)), flags, n, t))
        _, flags, n, t = min(fits)
        closer = f"{flags}, {n / 1e6:.1f}M parameters, ~{ratio(t / n)} tokens each (an estimate)"
        return f"            closer in the same time: {closer}"

    def checkpoint_bytes(self):
        """A checkpoint's size: the fp32 weights (a tied head once) and the optimizers' state (an FSDP shard's
        nbytes is its whole tensor's)."""
        optimizers = [optimizer.state_dict()["state"] for optimizer in self.state.optimizers]
        return 4 * self.state.model.num_params() + checkpoint.tensor_bytes(optimizers)
