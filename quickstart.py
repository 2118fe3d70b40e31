"""
The quick start in one command: Tiny Shakespeare tokenized (once), a little GPT (the `mini` preset) trained on this
machine for five minutes, then two samples from it. Any train_gpt2.py flag given wins over the quick start's own.

    python quickstart.py                        # five minutes, a new folder in log/
    python quickstart.py --time_budget 20m      # longer, lower: the schedule fits the budget
    python quickstart.py --plan                 # how far five minutes get here, without training
    python quickstart.py --recipe modern        # the same five minutes with the 2024 speedruns' recipe

It runs three commands, which docs/training.md ("The quick start, flag by flag") shows one by one.
"""

import sys
import time
from pathlib import Path

import fineweb
import sample
import train_gpt2

DATA = "tinyshakespeare"  # fineweb.py's folder for --dataset tinyshakespeare, beside input.txt
TOKENIZE = ["--dataset", "tinyshakespeare", "--shard_size", "32768"]  # 338k tokens: a val shard and ten train shards
TRAIN = ["--data_dir", DATA, "--model", "mini", "--seq_len", "256", "--total_batch_size", "2048", "--compile"]
TRAIN += ["--time_budget", "5m", "--max_steps", "600"]  # 600: 4 epochs
GPT2_RECIPE = ["--max_lr", "1e-3", "--warmup_steps", "20"]  # for this small model; --recipe modern brings its own
TRAIN += ["--eval_interval", "50", "--val_tokens", "32000", "--hellaswag_interval", "0", "--sample_interval", "0"]
SAMPLE = ["--prompt", "ROMEO:", "--num_samples", "2", "--max_new_tokens", "80"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    run = ["--log_dir", f"log/shakespeare-{time.strftime('%Y%m%d-%H%M%S')}"]  # a new run each time: nothing overwritten
    cfg = train_gpt2.parse_args(TRAIN + run + argv)  # a bad flag is refused before anything is tokenized
    flags = TRAIN + (GPT2_RECIPE if cfg.recipe == "gpt2" else []) + run + argv
    if not sorted(Path(DATA).glob(f"{DATA}_val_*.npy")):
        fineweb.main(TOKENIZE)
    train_gpt2.main(flags)
    if not cfg.plan:
        sample.main(["--checkpoint", cfg.log_dir, "--device", cfg.device, *SAMPLE])


if __name__ == "__main__":
    main()
