"""
A training run's record: RunLog writes its log.txt (and wandb), and this script plots it: train and val loss and,
when it was scored, HellaSwag, beside the numbers of OpenAI's GPT-2 124M and GPT-3 124M.

    python plot.py log            # writes log/plot.png

train_gpt2.py redraws <log_dir>/plot.png at every evaluation when matplotlib is installed. matplotlib is
optional (pip install matplotlib): without it training only prints a notice once.
"""

import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path

from cli import ArgumentParser, InputError

GPT2_124M_VAL_LOSS = 3.2924  # OpenAI's GPT-2 124M on the FineWeb-Edu 10B val shard
GPT2_124M_HELLASWAG = 0.2955  # acc_norm, completion-style scoring (hellaswag.py)
GPT3_124M_HELLASWAG = 0.337  # GPT-3 paper, table H.1 (GPT-3 Small)


def read_log(log_file):
    """log.txt as {kind: ([steps], [values])}, kinds train, val, val_bpb, hella."""
    if not Path(log_file).is_file():
        raise InputError(f"plot.py: {log_file} does not exist: name the --log_dir of a train_gpt2.py run")
    series = {}
    for line in Path(log_file).read_text().splitlines():
        try:
            step, kind, value = line.split()[:3]
            step, value = int(step), float(value)
        except ValueError as e:
            raise InputError(
                f"plot.py: {log_file} is not a train_gpt2.py log ({e}): lines must read <step> <kind> <value>"
            )
        steps, values = series.setdefault(kind, ([], []))
        steps.append(step)
        values.append(value)
    return series


def reference(log_dir):
    """(label, val loss, HellaSwag) of the model a run is held against: <log_dir>/reference.json's, which
    `train_gpt2.py --eval_only` writes for the run's own val split; else OpenAI GPT-2 124M's as build-nanogpt
    measured it, on its own FineWeb-Edu val shard (another split than yours unless you trained on that one)."""
    path = Path(log_dir) / "reference.json"
    if not path.is_file():
        return "OpenAI GPT-2 124M (build-nanogpt's FineWeb-Edu val shard)", GPT2_124M_VAL_LOSS, GPT2_124M_HELLASWAG
    try:
        scores = json.loads(path.read_text())
        return f"{scores['model']} on this val split", scores["val_loss"], scores["hellaswag"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"plot.py: {path} is not train_gpt2.py --eval_only's ({e!r}): delete it, or write it again")


def plot_run(log_dir):
    """Draw <log_dir>/log.txt into <log_dir>/plot.png and return its path; None without matplotlib."""
    log_dir = Path(log_dir)
    series = read_log(log_dir / "log.txt")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, works on headless GPU nodes
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ref_label, ref_loss, ref_hella = reference(log_dir)
    panels = 2 if "hella" in series else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)

    ax = axes[0][0]
    losses = []
    for kind, style in (("train", dict(lw=0.8, alpha=0.6)), ("val", dict(marker="o", ms=3))):
        if kind in series:
            ax.plot(*series[kind], label=f"{kind} loss", **style)
            losses += series[kind][1]
    if losses:
        low, high = min(losses), max(losses)
        ax.set_ylim(
            low - 0.1, min(high, low + 4.0) + 0.1
        )  # the early steps near ln(50257) = 10.8 would flatten the rest
        if low - 1.0 <= ref_loss:  # only once the run comes within a nat of it: a far line says nothing
            ax.axhline(ref_loss, color="red", ls="--", lw=1, label=f"{ref_label} ({ref_loss:.4f})")
    ax.set(xlabel="step", ylabel="loss (nats per token)", title="loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if "val_bpb" in series:  # the same evaluations in bits per UTF-8 byte of text: comparable across tokenizers
        bpb = ax.twinx()
        bpb.plot(*series["val_bpb"], color="tab:orange", ls=":", marker=".", label="val bits per byte (right)")
        bpb.set_ylabel("val bits per byte")
        bpb.legend(loc="center right")

    if "hella" in series:
        ax = axes[0][1]
        ax.plot(*series["hella"], marker="o", ms=3, color="green", label="this run")
        ax.axhline(0.25, color="gray", ls=":", lw=1, label="chance (0.25)")
        if ref_hella is not None:
            ax.axhline(ref_hella, color="red", ls="--", lw=1, label=f"{ref_label} ({ref_hella:.4f})")
        ax.axhline(
            GPT3_124M_HELLASWAG, color="purple", ls="--", lw=1, label=f"OpenAI GPT-3 124M ({GPT3_124M_HELLASWAG})"
        )
        ax.set(xlabel="step", ylabel="acc_norm", title="HellaSwag")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")

    fig.tight_layout()
    out = log_dir / "plot.png"
    tmp = out.with_name("plot.tmp.png")  # written whole, then renamed: a viewer never sees half a file
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def import_wandb():
    """wandb, for --wandb, once it is known to be installed and logged in (or offline): checked before the run
    writes anything, as wandb.init would otherwise fail with a traceback after log.txt was made."""
    try:
        import wandb  # only with --wandb: it is optional and slow to import
    except ImportError:
        raise InputError("--wandb needs the wandb package: pip install wandb, or leave out --wandb")
    offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")
    if not offline and not wandb.login(prompt=False, verify=False):  # reads the key; asks nothing, sends nothing
        raise InputError(
            "--wandb: not logged in to Weights & Biases: run `wandb login` once (or set WANDB_API_KEY),"
            " or set WANDB_MODE=offline to log to files only"
        )
    return wandb


def hours(seconds):
    return str(timedelta(seconds=round(seconds)))  # 1:02:03, or 2 days, 1:02:03


def describe_run(log, cfg, resume_path, model, precision, train_loader, val_loader):
    """train_gpt2.py's run, as its first lines say before the first step."""
    (device, dtype, why, compiled), world_size = precision, train_loader.world_size
    source = resume_path or cfg.init_from or cfg.model or "gpt2"
    log(f"model {source}: {model.num_params():,} parameters, {model.config}")
    precision = f"{str(dtype)[6:]}{' autocast' if dtype.itemsize < 4 else ''} ({why})"
    log(f"device {device}, {precision}, compile {'on' if compiled else 'off'}, {world_size} process(es)")
    local_bytes = sum((p.to_local() if cfg.fsdp else p).nbytes for p in model.parameters())
    share = f"1/{world_size} of them: FSDP" if cfg.fsdp else "all of them"
    log(f"{4 * local_bytes:,} bytes of weights, gradients and AdamW moments per process (fp32; {share})")
    B, T = train_loader.B, train_loader.T
    grad_accum_steps = cfg.total_batch_size // (B * T * world_size)
    steps = f"{B} x {T} x {world_size} processes x {grad_accum_steps} accumulation steps"
    log(f"{cfg.total_batch_size:,} tokens per step = {steps}")
    n_train, n_val = train_loader.total_tokens, val_loader.total_tokens
    log(f"train split {n_train:,} tokens in {len(train_loader.shards)} shards, val split {n_val:,} tokens")
    if cfg.val_tokens > n_val - 1:
        evaluated = f"evaluating all {(n_val - 1) // T * T:,} of them"  # val_sequences' whole sequences
        log(f"the val split has fewer than --val_tokens {cfg.val_tokens:,} tokens: {evaluated}")


class RunLog:
    """What a run records, on rank 0 (other ranks get a silent one, log_dir None): log.txt, one line
    `<step> <kind> <value>` per event (evaluations are printed too; a train loss is in the step line), plot.png
    after evaluations (with matplotlib), and with --wandb the same values plus each step's metrics."""

    def __init__(self, log_dir, checkpoint, cfg, pace, wandb=None):
        self.log_dir, self.path, self.wandb_run, self.plot_run, self.pace = log_dir, None, None, None, pace
        if log_dir is None or cfg.plan:  # --plan writes nothing
            return
        resumed_step = checkpoint["step"] if checkpoint is not None else None
        self.path = log_dir / "log.txt"
        if resumed_step is None:
            self.path.write_text("")
        elif self.path.exists():
            # back to the checkpoint: later lines, and one cut off, go; its own evaluations stay, unless they ran after
            # it was saved (a signal's or a time-based checkpoint is written first), as the resume runs them again
            evaluated = checkpoint.get("evaluated", True)
            lines = [
                line.split() + [line] for line in self.path.read_text().splitlines(keepends=True) if line[-1:] == "\n"
            ]
            kept = [
                line
                for step, kind, *_, line in lines
                if int(step) < resumed_step or (int(step) == resumed_step and kind != "train" and evaluated)
            ]
            tmp = self.path.with_name("log.txt.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
        # a resumed run goes on in the same wandb run, which drops the steps it already has
        wandb_id = checkpoint.get("wandb_run_id") if checkpoint is not None else None
        self.wandb_run = (
            wandb.init(
                project=cfg.wandb_project,
                name=cfg.run_name,
                id=wandb_id,
                resume="allow",
                dir=log_dir,
                config=dataclasses.asdict(cfg),
            )
            if wandb
            else None
        )
        try:
            import matplotlib  # noqa: F401  (optional)

            self.plot_run = plot_run
        except ImportError:
            print("matplotlib is not installed, so no plot.png: pip install matplotlib to get one")

    def step(self, step, loss, lr, norm, tok_per_sec, mfu):
        """An optimizer step: log.txt's train line and the step's metrics for wandb; the step line's end, how long
        the run has trained and has left (budget.Pace's clock)."""
        elapsed, eta = self.pace.times(step)
        self.event(step, train=loss)
        times = dict(elapsed_s=elapsed, **({"eta_s": eta} if eta is not None else {}), **({"mfu": mfu} if mfu else {}))
        self.metrics(step, lr=lr, norm=norm, tok_per_sec=tok_per_sec, **times)
        return f"elapsed {hours(elapsed)} | eta {'n/a' if eta is None else hours(eta)}{self.pace.note()}"

    def event(self, step, **values):
        """log.txt's lines `<step> <kind> <value>`, one per value; an evaluation's printed too, and the plot redrawn."""
        if self.path is None:
            return
        lines = [f"{step} {kind} {value:{'.6f' if kind == 'train' else '.4f'}}" for kind, value in values.items()]
        with open(self.path, "a") as f:
            f.write("".join(line + "\n" for line in lines))
        if "train" not in values:
            print("\n".join(lines))
            self.plot()
        self.metrics(step, **values)

    def metrics(self, step, **values):
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def finish(self, step, val_loss):
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.log_dir is not None:
            print(self.pace.summary(step, val_loss))

    def plot(self):
        if self.plot_run is not None:
            self.plot_run(self.log_dir)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument(
        "log_dir", help="a folder holding the log.txt of a train_gpt2.py run; plot.png is written there"
    )
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.log_dir)
    except InputError as e:
        raise SystemExit(str(e))
    if path is None:
        raise SystemExit("plot.py needs matplotlib: pip install matplotlib")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
