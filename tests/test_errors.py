"""Every input a user can get wrong, in every script: one clear line, a non-zero exit, no traceback, and
no file or folder created, changed or removed. One table, one test; docs/errors.md explains the lines."""

import dataclasses
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from checkpoint import RESUMABLE
from train_gpt2 import GPT, MODEL_PRESETS, PADDED_VOCAB_SIZE, RECIPES, SWITCHES, GPTConfig, TrainConfig

HELLA_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hellaswag" / "hellaswag_val.jsonl"
MICRO = dataclasses.asdict(
    GPTConfig(**MODEL_PRESETS["micro"], vocab_size=PADDED_VOCAB_SIZE)
)  # what the tiny run trains

# what every row of a script starts from (train_gpt2.py: the tiny run's flags first); a row's own arguments come
# after, and argparse keeps the last value
BASE = {
    "train": ["--data_dir", "{shards}", "--log_dir", "{tmp}/log", "--max_steps", "2"],
    "sample": ["--device", "cpu", "--dtype", "float32", "--max_new_tokens", "5"],
    "hellaswag": ["--device", "cpu", "--dtype", "float32", "--data_dir", "{hella}", "--limit", "10"],
    "fineweb": ["--out", "{tmp}/out", "--num_proc", "1"],
    "plot": [],
    "export": [],
}
SCRIPT = {
    "train": "train_gpt2.py",
    "sample": "sample.py",
    "hellaswag": "hellaswag.py",
    "fineweb": "fineweb.py",
    "plot": "plot.py",
    "export": "export_hf.py",
}
# offline, whatever the machine: downloads hit a closed port at once, Hugging Face looks only in an empty cache
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HOME": "{tmp}/hf", "NO_PROXY": "", "no_proxy": ""} | {
    k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
}


# --- making the bad input -----------------------------------------------------------


def file(name, data):
    """Writes tmp/name: data is bytes, or a function that makes them."""

    def make(tmp):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data if isinstance(data, bytes) else data())

    return make


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy(name, array):
    return file(name, npy_bytes(array))


def both(*makers):
    return lambda tmp: [make(tmp) for make in makers]


def table(name, columns):
    return lambda tmp: pq.write_table(pa.table(columns), tmp / name)


def checkpoint_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def small_checkpoint():
    config = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8)
    return checkpoint_bytes({"model": GPT(config).state_dict(), "config": dataclasses.asdict(config)})


def truncated_checkpoint():
    data = small_checkpoint()
    return data[: len(data) // 2]  # e.g. a disk that filled up while it was written


def misfit_checkpoint():
    """Loads, has a model and a config, but the weights are not the config's (another program wrote it)."""
    return checkpoint_bytes({"model": {"weights": torch.zeros(3)}, "config": MICRO, "step": 1})


def checkpoint_of_other_data():
    """A complete micro checkpoint, from a run whose train split held 12,345 tokens."""
    model = GPT(GPTConfig(**MICRO))
    return checkpoint_bytes({
        "model": model.state_dict(), "config": MICRO, "step": 1, "val_loss": 10.0,
        "optimizer": [optimizer.state_dict() for optimizer in model.configure_optimizers(TrainConfig(max_lr=3e-3), "cpu")],
        "train_loader": {"position": 512, "total_tokens": 12345}, "rng": {"cpu": torch.get_rng_state(), "cuda": []},
    })  # fmt: skip


def modern_checkpoint_of_one_optimizer():
    """A --recipe modern checkpoint with Muon's and AdamW's state in one dict, as written before 2026-12-06 (of
    today's architecture: the older one is refused before its optimizers are read)."""
    config = {**MICRO, "n_head": 1, **{k: v for k, v in RECIPES["modern"].items() if k in SWITCHES}}
    return checkpoint_bytes({
        "model": GPT(GPTConfig(**config)).state_dict(), "config": config, "step": 1, "val_loss": 10.0,
        "optimizer": {"state": {}, "param_groups": []}, "train_loader": {"position": 0, "total_tokens": 0},
        "rng": {"cpu": torch.get_rng_state(), "cuda": []},
    })  # fmt: skip


def older_modern_checkpoint():
    """A --recipe modern checkpoint as written before the recipe's 124M settings: no embed_norm, split_qkv in its
    config, four heads of 16 (today's asks for heads of 128)."""
    switches = dict(rope=True, qk_norm=True, relu2=True, rmsnorm=True, bias=False, tied_head=False, zero_init=True)
    config = {k: v for k, v in MICRO.items() if k not in ("embed_norm", "split_qkv")}
    config |= {"n_head": 4, **switches, "logit_softcap": 15.0}
    return checkpoint_bytes({
        "model": GPT(GPTConfig(**config)).state_dict(), "config": config, "step": 1, "val_loss": 10.0,
        "optimizer": [], "train_loader": {"position": 0, "total_tokens": 0}, "rng": {"cpu": torch.get_rng_state()},
    })  # fmt: skip


def modern_checkpoint(**switches):
    """A micro checkpoint of the modern recipe's switches, these changed."""
    config = {**MICRO, **{k: v for k, v in RECIPES["modern"].items() if k in SWITCHES}, **switches}
    return lambda: checkpoint_bytes({"model": GPT(GPTConfig(**config)).state_dict(), "config": config})


def old_transformers(tmp):
    """A transformers package without NanoChat, as 4.x was, ahead of the real one on the path."""
    (tmp / "old" / "transformers").mkdir(parents=True)
    (tmp / "old" / "transformers" / "__init__.py").write_text('__version__ = "4.46.0"\n')
    file("log/model_00002.pt", modern_checkpoint())(tmp)


def hf_folder(**config):
    """A random GPT-2 of the micro preset's shape in transformers' save_pretrained format, at tmp/hf."""

    def make(tmp):
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(
            GPT2Config(**{"n_positions": 128, "n_embd": 64, "n_layer": 2, "n_head": 2, **config})
        ).save_pretrained(tmp / "hf")

    return make


def hella_lines(n):
    with open(HELLA_FILE) as f:
        return list(itertools.islice(f, n))


def hella_edited(line, change):
    """The first 5 HellaSwag val examples, example `line` changed."""

    def data():
        lines = hella_lines(5)
        example = json.loads(lines[line - 1])
        change(example)
        lines[line - 1] = json.dumps(example) + "\n"
        return "".join(lines).encode()

    return file("hellaswag_val.jsonl", data)


def hella_text(text):
    return file("hellaswag_val.jsonl", lambda: text().encode())


def hella_truncated():
    lines = hella_lines(101)
    return "".join(lines[:100]) + lines[100][:50]  # cut inside line 101


def hella_broken_line_3():
    lines = hella_lines(5)
    lines[2] = lines[2].replace('"label": ', '"label" ', 1)
    return "".join(lines)


# --- the table --------------------------------------------------------------------------


def row(name, script, args, code, mention, make=None, env=None):
    """One bad input: `script` run with `args` ({tmp}: the test's folder, {shards}: Tiny Shakespeare shards,
    {hella}: the HellaSwag folder) after `make(tmp)` built the situation, must exit with `code`, its one
    line mentioning `mention`."""
    return pytest.param(script, args, make, code, mention, env or {}, id=f"{script}: {name}")


BAD_INPUTS = [
    # train_gpt2.py: flags
    row("unknown flag", "train", ["--bogus"], 2, "--bogus"),
    row("zero batch size", "train", ["--batch_size", "0"], 2, "--batch_size must be at least 1"),
    row("val_tokens under one sequence", "train", ["--val_tokens", "10"], 2, "--val_tokens 10 is less than one sequence"),
    row("seq_len over block_size", "train", ["--seq_len", "4096"], 2, "block_size of 128"),
    row("unknown device name", "train", ["--device", "tpu"], 2, "--device"),
    row("eval_only of no weights", "train", ["--eval_only"], 1, "--eval_only scores --init_from's weights"),
    row("eval_only into a folder it cannot write", "train", ["--eval_only", "--init_from", "{tmp}/hf", "--hellaswag_interval", "0", "--log_dir", "/proc/gpt2-kit/log"], 1,
        "--log_dir /proc/gpt2-kit/log: cannot write reference.json there", hf_folder()),
    row("eval_only with resume", "train", ["--eval_only", "--init_from", "gpt2", "--resume"], 2, "--eval_only scores --init_from in one process"),
    row("time budget not a duration", "train", ["--time_budget", "11x"], 2, "'11x' is not a duration such as 11h"),
    row("time budget negative", "train", ["--time_budget=-5m"], 2, "'-5m' is not a duration"),
    row("time budget of no time", "train", ["--time_budget", "0h"], 2, "'0h' is no time: give a positive duration"),
    row("time budget too short for a step", "train", ["--time_budget", "0.05s"], 1, "--time_budget of 0.05 s is too short for one step"),
    row("plan with resume", "train", ["--plan", "--resume"], 2, "--plan times a new run"),
    row("heads do not divide width", "train", ["--n_head", "3"], 2, "3 heads do not divide --n_embd 64"),
    row("head size does not divide width", "train", ["--head_size", "3"], 2, "21 heads do not divide --n_embd 64 (--n_head/--head_size)"),
    row("unknown model preset", "train", ["--model", "gpt7"], 2, "'gpt7'"),
    # cuda:99 is missing on every machine, GPU or not (mps too is refused where it is missing)
    row("unavailable device", "train", ["--device", "cuda:99"], 1, "--device cuda:99"),
    row("total batch not divisible by B x T x processes", "train", ["--total_batch_size", "1000"], 1, "not a multiple"),
    row("--fsdp in a single process", "train", ["--fsdp"], 2, "launch with torchrun"),
    row("a learning rate of nan", "train", ["--max_lr", "nan"], 2, "--max_lr: 'nan' is not a finite number"),
    row("an infinite clip", "train", ["--grad_clip", "inf"], 2, "--grad_clip: 'inf' is not a finite number"),
    row("negative checkpoint minutes", "train", ["--checkpoint_minutes", "-1"], 2, "--checkpoint_minutes must be 0 or more"),
    row("keep no checkpoints", "train", ["--keep_checkpoints", "0"], 2, "--keep_checkpoints must be at least 1"),
    row("a negative Muon learning rate", "train", ["--muon_lr", "-0.02"], 2, "--muon_lr and --embed_lr must be positive"),
    row("a negative soft-cap", "train", ["--logit_softcap", "-5"], 2, "--logit_softcap must be 0 or more"),
    row("--fsdp with Muon", "train", ["--recipe", "modern", "--fsdp"], 2, "torch's Muon would orthogonalize each shard"),
    # train_gpt2.py: the data dir
    row("missing data dir", "train", ["--data_dir", "{tmp}/nowhere"], 1, "no train shards"),
    row("empty data dir", "train", ["--data_dir", "{tmp}/data"], 1, "no train shards", lambda t: (t / "data").mkdir()),
    row("no val shard", "train", ["--data_dir", "{tmp}/data"], 1, "no val shards", npy("data/x_train_000001.npy", np.ones(5000, np.uint16))),
    row("shards of the wrong dtype", "train", ["--data_dir", "{tmp}/data"], 1, "int32", npy("data/x_train_000001.npy", np.arange(500, dtype=np.int32))),
    row("2-D shard", "train", ["--data_dir", "{tmp}/data"], 1, "(20, 20)", npy("data/x_train_000001.npy", np.zeros((20, 20), np.uint16))),
    row("token id >= vocab", "train", ["--data_dir", "{tmp}/data"], 1, "token id 50300", npy("data/x_train_000001.npy", np.full(500, 50300, np.uint16))),
    row("shard that is not a numpy file", "train", ["--data_dir", "{tmp}/data"], 1, "not a .npy array", file("data/x_train_000001.npy", b"hello")),
    row("truncated shard", "train", ["--data_dir", "{tmp}/data"], 1, "not a .npy array",
        file("data/x_train_000001.npy", npy_bytes(np.ones(1000, np.uint16))[:200])),
    row("empty shards", "train", ["--data_dir", "{tmp}/data"], 1, "too few to train on", npy("data/x_train_000001.npy", np.zeros(0, np.uint16))),
    row("val split shorter than one sequence", "train", ["--data_dir", "{tmp}/data"], 1, "val split holds 10 tokens",
        both(npy("data/x_train_000001.npy", np.ones(5000, np.uint16)), npy("data/x_val_000000.npy", np.ones(10, np.uint16)))),
    # train_gpt2.py: the log dir and its checkpoints
    row("fresh run into a log dir with checkpoints", "train", [], 1, "--resume", file("log/model_00005.pt", b"weights")),
    row("resume with only a damaged checkpoint", "train", ["--resume"], 1, "none of the checkpoints", file("log/model_00005.pt", b"PK\x03\x04junk")),
    row("resume with only a truncated checkpoint", "train", ["--resume"], 1, "none of the checkpoints", file("log/model_00005.pt", truncated_checkpoint)),
    row("resume into another architecture", "train", ["--resume"], 1, "was trained with",
        file("log/model_00003.pt", lambda: checkpoint_bytes({**dict.fromkeys(RESUMABLE), "config": {"n_layer": 99}, "step": 3}))),
    row("resume from a checkpoint of another config", "train", ["--resume"], 1, "holds no GPTConfig",
        file("log/model_00003.pt", lambda: checkpoint_bytes({**dict.fromkeys(RESUMABLE), "config": {"n_layers": 2}, "step": 3}))),
    row("resume on other data", "train", ["--resume"], 1, "resume with the data it was trained on", file("log/model_00001.pt", checkpoint_of_other_data)),
    row("resume a modern checkpoint of the combined optimizer", "train", ["--resume", "--recipe", "modern"], 1, "it holds 1 optimizers' state",
        file("log/model_00001.pt", modern_checkpoint_of_one_optimizer)),
    row("resume a modern checkpoint from before the 124M settings", "train", ["--resume", "--recipe", "modern"], 1,
        "it is an older --recipe modern: sample from it, or fine-tune it (--init_from, --no-embed_norm --no-split_qkv --n_head 4)",
        file("log/model_00001.pt", older_modern_checkpoint)),
    row("resume from a checkpoint whose weights do not fit its config", "train", ["--resume"], 1, "model_00001.pt",
        file("log/model_00001.pt", misfit_checkpoint)),
    row("resume from a checkpoint without training state", "train", ["--resume"], 1, "model_00001.pt",
        file("log/model_00001.pt", lambda: checkpoint_bytes({"model": GPT(GPTConfig(**MICRO)).state_dict(), "config": MICRO})),
    ),
    row("resume from a file that is not a training checkpoint", "train", ["--resume"], 1, "model_00001.pt",
        file("log/model_00001.pt", lambda: checkpoint_bytes([1, 2, 3]))),
    row("log dir is a file", "train", [], 1, "--log_dir", file("log", b"not a folder")),
    # train_gpt2.py --init_from
    row("unknown hub name to fine-tune", "train", ["--init_from", "gpt5"], 1, "neither a local folder"),
    row("hub weights unavailable offline", "train", ["--init_from", "gpt2"], 1, "cannot load 'gpt2'"),
    row("a folder that is not save_pretrained's", "train", ["--init_from", "{tmp}/hf"], 1, "not a save_pretrained folder", file("hf/notes.txt", b"hi")),
    row("a GPT-2 of another activation", "train", ["--init_from", "{tmp}/hf"], 1, "not a plain GPT-2 (gpt2, activation gelu)", hf_folder(activation_function="gelu")),
    row("a damaged checkpoint to fine-tune", "train", ["--init_from", "{tmp}/junk.pt"], 1, "damaged", file("junk.pt", b"PK\x03\x04 not a zip")),
    row("another program's file to fine-tune", "train", ["--init_from", "{tmp}/other.pt"], 1, "not a train_gpt2.py checkpoint",
        file("other.pt", lambda: checkpoint_bytes([1, 2, 3]))),
    row("a GPT-2 of a smaller vocabulary", "train", ["--init_from", "{tmp}/hf"], 1, "has a vocabulary of 1000", hf_folder(vocab_size=1000, bos_token_id=0, eos_token_id=0)),
    row("GPT-2's weights under the modern architecture", "train", ["--init_from", "{tmp}/hf", "--recipe", "modern"], 1, "(--recipe modern sets some)", hf_folder()),
    row("architecture flags against the weights", "train", ["--init_from", "{tmp}/hf", "--n_layer", "3"], 1, "but the flags ask for {'n_layer': 3}", hf_folder()),
    row("seq_len beyond the weights' block_size", "train", ["--init_from", "{tmp}/hf", "--seq_len", "256", "--total_batch_size", "1024"], 1, "--seq_len 256 exceeds the block_size 128", hf_folder()),
    row("log dir that cannot be created", "train", ["--log_dir", "/proc/gpt2-kit/log"], 1, "--log_dir /proc/gpt2-kit/log cannot be created"),
    # wandb installed, but no key and not offline: every first-time user (HOME outside {tmp}: wandb may cache there)
    row("--wandb without a login", "train", ["--wandb"], 1, "wandb login", None, {"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": "{tmp}/../home"}),
    # train_gpt2.py: tokenizer and HellaSwag
    row("no tokenizer files offline", "train", ["--sample_interval", "1"], 1, "tiktoken", lambda t: (t / "empty").mkdir(), {"TIKTOKEN_CACHE_DIR": "{tmp}/empty"}),
    row("HellaSwag file missing offline", "train", ["--hellaswag_interval", "1", "--hellaswag_dir", "{tmp}/hella"], 1, "cannot download"),
    row("HellaSwag file malformed", "train", ["--hellaswag_interval", "1", "--hellaswag_dir", "{tmp}"], 1, "line 3 is not valid JSON", hella_text(hella_broken_line_3)),
    # sample.py: flags
    row("unknown flag", "sample", ["--bogus"], 2, "--bogus"),
    row("both weight sources", "sample", ["--checkpoint", "{tmp}", "--init_from", "gpt2"], 2, "not allowed with"),
    row("zero temperature", "sample", ["--temperature", "0"], 2, "--temperature"),
    row("zero top_k", "sample", ["--top_k", "0"], 2, "--top_k"),
    row("zero samples", "sample", ["--num_samples", "0"], 2, "--num_samples"),
    row("zero new tokens", "sample", ["--max_new_tokens", "0"], 2, "--max_new_tokens"),
    row("unknown device name", "sample", ["--device", "tpu"], 2, "--device"),
    row("unavailable device", "sample", ["--device", "cuda:99"], 1, "--device cuda:99"),
    # sample.py: weights and tokenizer
    row("no log dir", "sample", [], 1, "checkpoint log does not exist"),
    row("no checkpoint in the default log dir", "sample", [], 1, "no checkpoint", lambda t: (t / "log").mkdir()),
    row("missing checkpoint file", "sample", ["--checkpoint", "{tmp}/model_00005.pt"], 1, "does not exist"),
    row("damaged checkpoint", "sample", ["--checkpoint", "{tmp}/junk.pt"], 1, "damaged", file("junk.pt", b"PK\x03\x04 not a zip")),
    row("truncated checkpoint", "sample", ["--checkpoint", "{tmp}/model_00005.pt"], 1, "cannot be loaded", file("model_00005.pt", truncated_checkpoint)),
    row("damaged newest checkpoint of a log dir", "sample", [], 1, "model_00009.pt cannot be loaded",
        both(file("log/model_00002.pt", small_checkpoint), file("log/model_00009.pt", truncated_checkpoint))),
    row("not a training checkpoint", "sample", ["--checkpoint", "{tmp}/other.pt"], 1, "not a train_gpt2.py checkpoint",
        file("other.pt", lambda: checkpoint_bytes({"weights": torch.zeros(3)}))),
    row("checkpoint whose weights do not fit its config", "sample", ["--checkpoint", "{tmp}/model_00001.pt"], 1, "model_00001.pt",
        file("model_00001.pt", misfit_checkpoint)),
    row("unknown hub name", "sample", ["--init_from", "gpt5"], 1, "neither a local folder"),
    row("hub weights unavailable offline", "sample", ["--init_from", "gpt2"], 1, "cannot load 'gpt2'"),
    # a file as tiktoken's cache folder: no tokenizer, whether or not the network is there
    row("no tokenizer files", "sample", [], 1, "tiktoken", file("junk.pt", b"junk"), {"TIKTOKEN_CACHE_DIR": "{tmp}/junk.pt"}),
    # hellaswag.py: flags
    row("unknown flag", "hellaswag", ["--checkpoint", "x", "--bogus"], 2, "unrecognized arguments: --bogus"),
    row("no model", "hellaswag", [], 2, "one of the arguments -m/--model_type --checkpoint is required"),
    row("two models", "hellaswag", ["-m", "gpt2", "--checkpoint", "x"], 2, "not allowed with"),
    row("zero batch size", "hellaswag", ["--checkpoint", "x", "--batch_size", "0"], 2, "--batch_size must be at least 1"),
    row("zero limit", "hellaswag", ["--checkpoint", "x", "--limit", "0"], 2, "--limit must be at least 1"),
    row("unknown device name", "hellaswag", ["--checkpoint", "x", "--device", "tpu"], 2, "argument --device: 'tpu' is not one of"),
    row("test split", "hellaswag", ["--checkpoint", "x", "--split", "test"], 2, "invalid choice: 'test'"),
    row("unavailable device", "hellaswag", ["--checkpoint", "x", "--device", "cuda:99"], 1, "--device cuda:99"),
    # hellaswag.py: the data file (read before the model, so --checkpoint x is never opened)
    row("file missing offline", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "cannot download https://raw.githubusercontent.com/"),
    row("truncated file", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 101 is not valid JSON", hella_text(hella_truncated)),
    row("malformed line", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 3 is not valid JSON", hella_text(hella_broken_line_3)),
    row("key missing", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 2: no endings", hella_edited(2, lambda e: e.pop("endings"))),
    row("label out of range", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 4: label 7 is not 0, 1, 2 or 3", hella_edited(4, lambda e: e.update(label=7))),
    row("label as text", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 1: label '1' is not", hella_edited(1, lambda e: e.update(label="1"))),
    row("three endings", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 3: 3 endings instead of 4", hella_edited(3, lambda e: e["endings"].pop())),
    row("not an object", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl line 3: not a JSON object", hella_text(lambda: "".join(hella_lines(2)) + "[1, 2]\n")),
    row("cut at a line end", "hellaswag", ["--checkpoint", "x", "--data_dir", "{tmp}"], 1, "hellaswag_val.jsonl holds 100 examples, the val split has 10042",
        hella_text(lambda: "".join(hella_lines(100)))),
    # hellaswag.py: the model
    row("missing checkpoint", "hellaswag", ["--checkpoint", "{tmp}/model_00005.pt"], 1, "does not exist"),
    row("log dir without checkpoints", "hellaswag", ["--checkpoint", "{tmp}/log"], 1, "no checkpoint", lambda t: (t / "log").mkdir()),
    row("damaged checkpoint", "hellaswag", ["--checkpoint", "{tmp}/junk.pt"], 1, "damaged", file("junk.pt", b"PK\x03\x04 not a zip")),
    row("truncated checkpoint", "hellaswag", ["--checkpoint", "{tmp}/log"], 1, "model_00005.pt cannot be loaded", file("log/model_00005.pt", truncated_checkpoint)),
    row("not a training checkpoint", "hellaswag", ["--checkpoint", "{tmp}/other.pt"], 1, "not a train_gpt2.py checkpoint",
        file("other.pt", lambda: checkpoint_bytes([1, 2, 3]))),
    row("checkpoint whose weights do not fit its config", "hellaswag", ["--checkpoint", "{tmp}/model_00001.pt"], 1, "model_00001.pt",
        file("model_00001.pt", misfit_checkpoint)),
    row("Hugging Face model unavailable offline", "hellaswag", ["-m", "gpt5"], 1, "cannot load 'gpt5'"),
    row("Hugging Face folder of another architecture", "hellaswag", ["-m", "{tmp}/llama"], 1, "is a llama: hellaswag.py -m scores",
        file("llama/config.json", b'{"model_type": "llama"}')),
    # fineweb.py: flags
    row("unknown flag", "fineweb", ["--input", "{tmp}/docs.txt", "--no_such_flag"], 2, "--no_such_flag"),
    row("zero shard size", "fineweb", ["--input", "{tmp}/docs.txt", "--shard_size", "0"], 2, "--shard_size"),
    row("fractional shard size", "fineweb", ["--input", "{tmp}/docs.txt", "--shard_size", "1.5"], 2, "--shard_size"),
    row("num_proc not a number", "fineweb", ["--input", "{tmp}/docs.txt", "--num_proc", "abc"], 2, "--num_proc"),
    row("two sources", "fineweb", ["--input", "{tmp}/docs.txt", "--dataset", "x"], 2, "not allowed with"),
    # fineweb.py: inputs
    row("missing input file", "fineweb", ["--input", "{tmp}/missing.txt"], 1, "missing.txt"),
    row("glob matching nothing", "fineweb", ["--input", "{tmp}/nothing/*.jsonl"], 1, "matches no file"),
    row("unsupported suffix", "fineweb", ["--input", "{tmp}/docs.csv"], 1, "docs.csv", file("docs.csv", b"text\nhello\n")),
    row("corrupt parquet", "fineweb", ["--input", "{tmp}/docs.parquet"], 1, "docs.parquet", file("docs.parquet", b"PAR1 not really parquet")),
    row("parquet without text column", "fineweb", ["--input", "{tmp}/docs.parquet"], 1, "'text'", table("docs.parquet", {"body": ["hi"]})),
    row("parquet with a non-text column", "fineweb", ["--input", "{tmp}/docs.parquet"], 1, "'text'", table("docs.parquet", {"text": [1, 2]})),
    row("parquet with missing texts", "fineweb", ["--input", "{tmp}/docs.parquet"], 1, "missing values", table("docs.parquet", {"text": ["hi", None]})),
    row("jsonl without text field", "fineweb", ["--input", "{tmp}/docs.jsonl"], 1, "docs.jsonl:2", file("docs.jsonl", b'{"text": "ok"}\n{"body": "hi"}\n')),
    row("malformed jsonl line", "fineweb", ["--input", "{tmp}/docs.jsonl"], 1, "docs.jsonl:4", file("docs.jsonl", b'{"text": "ok"}\n\n{"text": "fine"}\n{"text": broken\n')),
    row("not utf-8 text", "fineweb", ["--input", "{tmp}/docs.txt"], 1, "docs.txt", file("docs.txt", b"caf\xe9")),
    row("input without documents", "fineweb", ["--input", "{tmp}/docs.jsonl"], 1, "no documents", file("docs.jsonl", b"\n")),
    row("text_column absent", "fineweb", ["--input", "{tmp}/docs.jsonl", "--text_column", "content"], 1, "'content'", file("docs.jsonl", b'{"text": "ok"}\n')),
    row("default dataset offline", "fineweb", [], 1, "HuggingFaceFW/fineweb-edu"),
    # fineweb.py: the output folder
    row("out holding shards of another program", "fineweb", ["--input", "{tmp}/docs.txt"], 1, "manifest",
        both(file("docs.txt", b"hello"), npy("out/edufineweb_val_000000.npy", np.arange(10, dtype=np.uint16)))),
    row("damaged manifest in out", "fineweb", ["--input", "{tmp}/docs.txt"], 1, "manifest.json", both(file("docs.txt", b"hello"), file("out/manifest.json", b"{"))),
    row("out is a file", "fineweb", ["--input", "{tmp}/docs.txt", "--out", "{tmp}/docs.txt"], 1, "is a file, not a folder", file("docs.txt", b"hello")),
    # plot.py
    row("no log dir given", "plot", [], 2, "log_dir"),
    row("unknown flag", "plot", ["{tmp}", "--bogus"], 2, "--bogus"),
    row("no log.txt in the log dir", "plot", ["{tmp}/nowhere"], 1, "log.txt does not exist"),
    row("log.txt of another program", "plot", ["{tmp}/log"], 1, "not a train_gpt2.py log", file("log/log.txt", b"0 train 10.9\nepoch 1 done\n")),
    # export_hf.py
    row("no arguments", "export", [], 2, "the following arguments are required"),
    row("missing checkpoint", "export", ["{tmp}/model_00005.pt", "{tmp}/out"], 1, "does not exist"),
    row("log dir without checkpoints", "export", ["{tmp}/log", "{tmp}/out"], 1, "no checkpoint", lambda t: (t / "log").mkdir()),
    row("truncated checkpoint", "export", ["{tmp}/log", "{tmp}/out"], 1, "model_00005.pt cannot be loaded", file("log/model_00005.pt", truncated_checkpoint)),
    row("not a training checkpoint", "export", ["{tmp}/other.pt", "{tmp}/out"], 1, "not a train_gpt2.py checkpoint", file("other.pt", lambda: checkpoint_bytes([1, 2, 3]))),
    row("output folder not empty", "export", ["{tmp}/log", "{tmp}/out"], 1, "already exists and is not empty",
        both(file("log/model_00002.pt", small_checkpoint), file("out/config.json", b"{}"))),
    row("no tokenizer files", "export", ["{tmp}/log", "{tmp}/out"], 1, "tiktoken", both(file("log/model_00002.pt", small_checkpoint), file("junk", b"junk")),
        {"TIKTOKEN_CACHE_DIR": "{tmp}/junk"}),
    row("learned positions with ReLU²", "export", ["{tmp}/log", "{tmp}/out"], 1,
        "holds this model: the closer, NanoChatForCausalLM, needs {'rope': True}",
        file("log/model_00002.pt", modern_checkpoint(rope=False))),
    row("a modern model and a transformers without NanoChat", "export", ["{tmp}/log", "{tmp}/out"], 1,
        "needs transformers' NanoChatForCausalLM, in transformers 5.0 and later; this is 4.46.0", old_transformers,
        {"PYTHONPATH": "{tmp}/old"}),
    row("output folder that cannot be created", "export", ["{tmp}/log", "/proc/gpt2-kit/out"], 1, "/proc/gpt2-kit/out cannot be written",
        file("log/model_00002.pt", small_checkpoint)),
]  # fmt: skip


@pytest.mark.parametrize("script, args, make, code, mention, env", BAD_INPUTS)
def test_bad_input_gets_one_line_and_changes_nothing(
    script, args, make, code, mention, env, run, tiny, snapshot_of, shakespeare_shards, tmp_path
):
    if make:
        make(tmp_path)
    fill = dict(tmp=tmp_path, shards=shakespeare_shards, hella=HELLA_FILE.parent)
    args = [a.format(**fill) for a in (tiny if script == "train" else []) + BASE[script] + args]
    # the folders the command is given, besides its own; the 11 MB HellaSwag file is only hashed when named
    folders = [tmp_path] + [fill[k] for k in ("shards", "hella") if str(fill[k]) in args]
    before = snapshot_of(*folders)
    proc = run(
        SCRIPT[script], *args, cwd=tmp_path, env={k: v.format(**fill) for k, v in (OFFLINE | env).items()}, timeout=120
    )
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == code and len(errors) == 1, proc.stderr
    assert mention in errors[0], errors[0]
    # stdout stays empty, but for train_gpt2.py --resume naming each damaged checkpoint it skips
    assert all(line.endswith("trying an older one") for line in proc.stdout.splitlines()), proc.stdout
    assert snapshot_of(*folders) == before
