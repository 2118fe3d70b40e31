"""
HellaSwag (Zellers et al. 2019) for GPT-2: download, render and score, completion style.

    python hellaswag.py -m gpt2                   # OpenAI's GPT-2 124M through transformers
    python hellaswag.py --checkpoint log          # our newest checkpoint in log/
    python hellaswag.py -m gpt2 --limit 1000 --device cpu   # the first 1,000 examples, on a CPU

Each example is a context and 4 endings. The model reads the tokens of the context followed by
those of " " + ending, one row per ending, and only the ending's tokens are scored: acc picks the
ending with the lowest summed loss, acc_norm the one with the lowest mean loss per ending token.
This is build-nanogpt's scoring; with it GPT-2 124M gets acc 0.2859 and acc_norm 0.2955 on val
(the GPT-3 paper reports 0.337 for its 125M model). lm-evaluation-harness scores differently: it
cleans the text and divides the summed log-likelihood by the ending's length in characters, so its
acc_norm for the same model is another number. Compare only numbers from the same scorer.

Training renders the examples once with load_examples and scores them with evaluate as often as
it likes, with the bare (uncompiled) model: forwards have the length of their longest row, and
compiling every length would cost more than it saves.
"""

import contextlib
import http.client
import json
import os
import urllib.request
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from cli import DEVICE_FLAG, DTYPE_FLAG, ArgumentParser, InputError, check_at_least, first_line
from hardware import autocast_dtype, pick_device
from tokenizer import gpt2_tokenizer

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
DATA_DIR = Path(__file__).resolve().parent / "hellaswag"  # download cache, beside this script
SPLIT_SIZES = {"train": 39905, "val": 10042}  # examples per file: fewer means a truncated file
DOWNLOAD_TIMEOUT = 10  # seconds to wait for the server: fails fast offline instead of hanging
# the LM head runs on LM_HEAD_ROWS ending positions at a time: enough rows for an efficient matmul, while the
# whole batch's logits (400 MB at 16 examples per forward) would not even fit in a CPU's caches
LM_HEAD_ROWS = 256
# and, on a CPU, the float32 cross-entropy on CPU_LOSS_ROWS of them at a time: 32 x 50304 floats (6 MB) stay
# in the cache from the upcast to the log-softmax, where 128 rows at once (26 MB, out to RAM and back) made
# the loss cost 3x the LM head's matmul. A GPU takes all LM_HEAD_ROWS at once: its memory is fast, and
# each slice costs kernel launches
CPU_LOSS_ROWS = 32

# -----------------------------------------------------------------------------
# data: hellaswag_<split>.jsonl, one example per line


def download(url, path):
    """Fetch url into path with a progress bar, via a temporary name: a cut download never looks complete."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: DDP ranks may download at once
    made = not path.parent.exists()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length", 0))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f, tqdm(total=total or None, unit="B", unit_scale=True, desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    bar.update(f.write(chunk))
        if total and tmp.stat().st_size != total:
            raise OSError(f"the connection closed after {tmp.stat().st_size} of {total} bytes")
        os.replace(tmp, path)
    except (OSError, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        if made:  # the folder made for the download goes too, unless another rank is downloading into it
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        reason = getattr(e, "reason", None) or e
        raise InputError(
            f"cannot download {url} ({reason}): check the network, or copy {path.name} into {path.parent}/"
        )


def problem(example):
    """What makes one parsed line unusable, or None."""
    if not isinstance(example, dict):
        return "not a JSON object"
    if missing := [key for key in ("ctx", "endings", "label") if key not in example]:
        return f"no {' or '.join(missing)}"
    endings, label = example["endings"], example["label"]
    if (
        not isinstance(example["ctx"], str)
        or not isinstance(endings, list)
        or not all(isinstance(e, str) for e in endings)
    ):
        return "ctx must be a string and endings a list of strings"
    if len(endings) != 4:
        return f"{len(endings)} endings instead of 4"
    if type(label) is not int or not 0 <= label <= 3:
        return f"label {label!r} is not 0, 1, 2 or 3"
    return None


def read_split(path, split):
    """The examples of one split file, checked line by line so a damaged file stops here, naming the line."""
    examples = []
    try:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    example = json.loads(line)
                except ValueError:  # bad JSON, or bytes that are not UTF-8
                    raise InputError(
                        f"{path} line {lineno} is not valid JSON: the file is damaged or truncated; delete it to download it again"
                    )
                if reason := problem(example):
                    raise InputError(f"{path} line {lineno}: {reason}; this is not a HellaSwag file")
                examples.append(example)
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror or e})")
    if split in SPLIT_SIZES and len(examples) != SPLIT_SIZES[split]:
        raise InputError(
            f"{path} holds {len(examples)} examples, the {split} split has {SPLIT_SIZES[split]}: the file is truncated; delete it to download it again"
        )
    return examples


def render(example, enc):
    """(context tokens, the 4 endings' tokens, label). An ending is encoded with its leading space, as
    it follows the context in running text: GPT-2's BPE folds the space into the next word's token."""
    endings = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    return enc.encode_ordinary(example["ctx"]), endings, example["label"]


def load_examples(data_dir=None, split="val", limit=None):
    """The first `limit` examples (all if None) of a split, rendered to GPT-2 tokens; downloads the split
    into data_dir (default DATA_DIR) unless it is already there."""
    path = Path(data_dir or DATA_DIR) / f"hellaswag_{split}.jsonl"
    if not path.exists():
        download(URL.format(split=split), path)
    examples = read_split(path, split)[:limit]
    enc = gpt2_tokenizer()
    return [render(example, enc) for example in examples]


# -----------------------------------------------------------------------------
# scoring


@torch.no_grad()
def choose(model, batch, block_size, device, autocast):
    """The acc and acc_norm choices of each example in batch, from one forward over its 4 rows per example,
    right-padded to the longest (causal attention: a row never sees the padding after it)."""
    rows = [((ctx + ending)[-(block_size + 1) :], len(ending)) for ctx, endings, _ in batch for ending in endings]
    length = max(len(tokens) for tokens, _ in rows) - 1  # past block_size, a context loses its oldest tokens
    inputs = torch.zeros(len(rows), length, dtype=torch.long)
    targets = torch.zeros(len(rows), length, dtype=torch.long)
    scored = torch.zeros(len(rows), length, dtype=torch.bool)
    for row, (tokens, n_ending) in enumerate(rows):
        n = len(tokens) - 1
        inputs[row, :n] = torch.tensor(tokens[:-1])
        targets[row, :n] = torch.tensor(tokens[1:])
        scored[row, n - min(n_ending, n) : n] = True
    inputs, targets, scored = inputs.to(device), targets.to(device), scored.to(device)
    losses = torch.zeros(len(rows), length, device=device)
    with autocast:
        # the 50304-wide LM head only where it predicts an ending token (a third of the positions, and for
        # small models most of the cost of a forward), LM_HEAD_ROWS at a time; float32 cross-entropy, as
        # bf16 is too coarse to rank close endings
        hidden, scored_targets = model.hidden_states(inputs)[scored], targets[scored]
        loss_rows = CPU_LOSS_ROWS if device.type == "cpu" else LM_HEAD_ROWS
        losses[scored] = torch.cat(
            [
                F.cross_entropy(logits.float(), t, reduction="none")
                for start in range(0, len(hidden), LM_HEAD_ROWS)
                for logits, t in zip(
                    model.logits(hidden[start : start + LM_HEAD_ROWS]).split(loss_rows),
                    scored_targets[start : start + LM_HEAD_ROWS].split(loss_rows),
                    strict=True,
                )
            ]
        )
    sums = losses.sum(1).view(-1, 4)
    means = sums / scored.sum(1).view(-1, 4)
    return sums.argmin(1).tolist(), means.argmin(1).tolist()


def predict(model, examples, block_size, device, autocast, batch_size, rank=0, world_size=1, progress=False):
    """The acc and acc_norm choices (ending indices) for examples[rank::world_size], batch_size examples
    (4 * batch_size rows) per forward. model is our GPT (or HFModel): scoring uses its hidden_states and logits."""
    mine = examples[rank::world_size]
    # longest first, so that each forward pads its rows to about the same length, and the first one shows
    # the peak memory
    order = sorted(range(len(mine)), key=lambda i: -max(len(mine[i][0]) + len(ending) for ending in mine[i][1]))
    choices, choices_norm = [0] * len(mine), [0] * len(mine)
    with tqdm(total=len(mine), unit="examples", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            acc, acc_norm = choose(model, [mine[i] for i in batch], block_size, device, autocast)
            for i, a, a_norm in zip(batch, acc, acc_norm, strict=True):
                choices[i], choices_norm[i] = a, a_norm
            bar.update(len(batch))
    return choices, choices_norm


def evaluate(model, examples, block_size, device, autocast, batch_size, rank=0, world_size=1, progress=False):
    """(n, n_correct, n_correct_norm) over all examples: rank r scores examples r, r + world_size, ...
    and the counts are summed over the ranks, so they do not depend on world_size."""
    choices, choices_norm = predict(
        model, examples, block_size, device, autocast, batch_size, rank, world_size, progress
    )
    labels = [label for _, _, label in examples[rank::world_size]]
    correct = sum(c == label for c, label in zip(choices, labels, strict=True))
    correct_norm = sum(c == label for c, label in zip(choices_norm, labels, strict=True))
    counts = torch.tensor([len(labels), correct, correct_norm], device=device)
    if world_size > 1:
        torch.distributed.all_reduce(counts)
    return tuple(counts.tolist())


class HFModel(torch.nn.Module):
    """A transformers causal LM (GPT2LMHeadModel, or the NanoChatForCausalLM export_hf.py writes for --recipe modern)
    behind the two parts of our GPT that scoring uses."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.cap = hf, getattr(hf.config, "final_logit_softcapping", None)

    def hidden_states(self, idx):
        return self.hf.base_model(idx, use_cache=False).last_hidden_state  # after the final norm, as ours

    def logits(self, hidden):
        logits = self.hf.lm_head(hidden)
        return self.cap * torch.tanh(logits.float() / self.cap) if self.cap else logits


def load_hf_model(model_type, device):
    """(model in eval mode, its block_size) from a Hugging Face name or save_pretrained folder."""
    from transformers import AutoConfig, AutoModelForCausalLM  # slow to import: only for a Hugging Face model

    try:
        kind = AutoConfig.from_pretrained(model_type).model_type
        if kind not in ("gpt2", "nanochat"):
            raise InputError(f"{model_type!r} is a {kind}: hellaswag.py -m scores a GPT-2 or an export_hf.py folder")
        hf = AutoModelForCausalLM.from_pretrained(model_type)
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot load {model_type!r} ({first_line(e)}): pass a Hugging Face name such as gpt2, or a"
            " save_pretrained folder"
        )
    return HFModel(hf).to(device).eval(), getattr(hf.config, "n_positions", None) or hf.config.max_position_embeddings


# -----------------------------------------------------------------------------
# the command line


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-m",
        "--model_type",
        help="a Hugging Face GPT-2 (gpt2 ... gpt2-xl) or a save_pretrained folder (export_hf.py's), by transformers",
    )
    source.add_argument("--checkpoint", help="a train_gpt2.py checkpoint file, or a log dir (its newest checkpoint)")
    parser.add_argument(
        "--data_dir", default=str(DATA_DIR), help="folder holding hellaswag_<split>.jsonl; downloaded there if missing"
    )
    parser.add_argument(
        "--split", default="val", choices=["val", "train"], help="which split (the test split has no public labels)"
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples; None scores all")
    parser.add_argument("--batch_size", type=int, default=16, help="examples per forward pass, 4 rows each")
    parser.add_argument("--device", **DEVICE_FLAG)
    parser.add_argument(
        "--dtype",
        **{
            **DTYPE_FLAG,
            "default": "float32",
            "help": "float32 scores as the published numbers were made "
            "(TF32 matmuls on CUDA); bfloat16 or float16 autocast is faster, and a few near-tie examples can flip",
        },
    )
    args = parser.parse_args(argv)
    check_at_least(parser, args, 1, ["batch_size", "limit"])
    return args


def main(argv=None):
    from train_gpt2 import GPT  # the script that trains imports this one: here, not at the top, imports run one way

    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        examples = load_examples(args.data_dir, args.split, args.limit)  # before the model: bad data fails fast
        if args.checkpoint:
            model = GPT.from_checkpoint(args.checkpoint, device).eval()
            block_size = model.config.block_size
        else:
            model, block_size = load_hf_model(args.model_type, device)
        dtype, why = autocast_dtype(args.dtype, device)
    except InputError as e:
        raise SystemExit(str(e))
    model_name = args.model_type or args.checkpoint
    print(f"{len(examples)} {args.split} examples, {model_name} on {device}, {str(dtype)[6:]} ({why})")
    autocast = torch.autocast(device.type, dtype, enabled=dtype != torch.float32)
    n, correct, correct_norm = evaluate(model, examples, block_size, device, autocast, args.batch_size, progress=True)
    print(f"hellaswag {args.split}: n={n} acc={correct / n:.4f} acc_norm={correct_norm / n:.4f}")


if __name__ == "__main__":
    main()
