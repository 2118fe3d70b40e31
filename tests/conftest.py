"""Shared test setup: the offline copies in ../shared/data, the scripts run as a user runs them, and the tiny
training run most tests start from. Test files take these as fixtures; none imports another."""

import functools
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# elsewhere where OFFLINE_DATA names a copy: tools/gpu_check.py's bundle, on a GPU machine
SHARED_DATA = Path(os.environ.get("OFFLINE_DATA", REPO.parent / "shared" / "data"))

# tiktoken reads this on its first get_encoding call; set it before any test imports the scripts
if (SHARED_DATA / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken_cache"))
sys.path.insert(0, str(REPO))

# a 2-layer, 64-dim model on Tiny Shakespeare: 20 steps take a few seconds on 2 CPU cores
TINY = [
    "--model", "micro", "--batch_size", "4", "--seq_len", "64", "--total_batch_size", "512",
    "--max_lr", "3e-3", "--warmup_steps", "5", "--val_tokens", "4096", "--sample_interval", "0", "--hellaswag_interval", "0",
    "--dtype", "float32", "--device", "cpu",
]  # fmt: skip


def child_env(env=None):
    """The environment of a script the tests start: this one's, with two settings of its own, whatever the shell has.
    Output unbuffered, so that a test reading a running script's lines gets each as it is printed (PYTHONUNBUFFERED is
    set on the project's machines, not in a new shell). glibc's malloc keeping freed blocks of up to 256 MB: it maps
    and unmaps each step's (B, T, 50304) logits anew otherwise, page faults that double a tiny CPU step's time."""
    speed = {"MALLOC_MMAP_THRESHOLD_": str(2**28), "MALLOC_TRIM_THRESHOLD_": str(2**28)}
    return {**os.environ, "PYTHONUNBUFFERED": "1", **speed, **(env or {})}


def command(script, args, torchrun=0):
    """The command line of one of the repository's scripts (or a script at a path), as a user types it: python, or
    torchrun with that many processes."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else []
    return [sys.executable, *launcher, str(REPO / script), *map(str, args)]


def run_script(script, *args, torchrun=0, cwd=None, env=None, timeout=600):
    """The script run to its end: its CompletedProcess (text stdout and stderr). Forked from a Python that has
    imported torch (tests/prewarmed.py), unless torchrun launches it or `env` sets what is read as those modules are
    imported."""
    if torchrun or any(k.startswith(READ_AT_START) for k in env or {}):
        cmd = command(script, args, torchrun)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=child_env(env))
    cmd = command(script, args)
    with tempfile.TemporaryDirectory() as out:
        stdout, stderr = Path(out, "stdout"), Path(out, "stderr")
        request = [cmd[1], cmd[2:], str(cwd or os.getcwd()), child_env(env), str(stdout), str(stderr)]
        code = prewarmed().run(request, timeout)
        output = stdout.read_text(), stderr.read_text()
    if code is None:
        raise subprocess.TimeoutExpired(cmd, timeout, *output)
    return subprocess.CompletedProcess(cmd, code, *output)


# what the interpreter, libc, OpenMP, torch, its compiler's config (CXX), tiktoken and matplotlib read as they are
# imported (tests/prewarmed.py has imported them)
READ_AT_START = ("PYTHON", "LD_", "MALLOC_", "OMP_", "MKL_", "TORCH", "CXX", "TIKTOKEN", "MPL")


class Prewarmed:
    """The tests' end of tests/prewarmed.py: one per test process, its runs one at a time."""

    def __init__(self):
        script = str(REPO / "tests" / "prewarmed.py")
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.proc = subprocess.Popen([sys.executable, script], env=child_env(), **pipes)

    def reply(self, timeout=None):
        """The next number it prints; None if none came within timeout seconds. Read a byte at a time: a buffered
        read could take the next reply too, which select() would then wait for in vain."""
        line, fd = b"", self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            if not select.select([fd], [], [], timeout)[0]:
                return None
            byte = os.read(fd, 1)
            assert byte, "tests/prewarmed.py has died"
            line += byte
        return int(line)

    def run(self, request, timeout):
        """The exit code of one run; None if it ran past timeout seconds (then it is killed)."""
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        pid = self.reply()
        code = self.reply(timeout)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            self.reply()
        return code


@functools.cache
def prewarmed():
    return Prewarmed()


def start_script(script, *args, torchrun=0, env=None, **popen):
    """The script started in the background: a Popen whose stdout and stderr are text pipes."""
    return subprocess.Popen(
        command(script, args, torchrun),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env),
        **popen,
    )


def read_until(proc, prefix):
    """A started script's stdout lines up to the first that starts with prefix; that the script ended without one
    fails the test, with all it printed."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting {prefix!r}: {''.join(lines)}{proc.stderr.read()}")


def same(a, b):
    """Bitwise equality of two checkpoints' parts: tensors (dtype, shape and every bit) in nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def assert_same_run(expected, got, step, parts=("model",)):
    """The run in log dir `got` repeats the one in `expected` bitwise: the same log.txt, and at `step` the same
    checkpoint parts (the weights; the optimizer, scaler or data position where asked)."""
    assert (Path(got) / "log.txt").read_text() == (Path(expected) / "log.txt").read_text()
    a, b = (torch.load(Path(d) / f"model_{step:05d}.pt", weights_only=True) for d in (expected, got))
    for part in parts:
        assert same(a[part], b[part]), f"step {step}: the checkpoints' {part} differ"


def largest_difference(a, b):
    """The largest |difference| of two state dicts' tensors."""
    return max((a[name].double() - b[name].double()).abs().max().item() for name in a)


def assert_agree_within_noise(expected, got, other_order, step=None):
    """Two runs that compute the same steps in another way (DDP, FSDP) agree within rounding noise measured here: ten
    times the largest difference between `expected` and `other_order`, a run of the same steps that only sums in
    another order; at least the log's last digit (train losses 1e-6, evaluations 1e-4). Per kind of log.txt value, and
    for the weights at `step` if given. A slip that changes the math moves them by orders more."""
    a, b, noise = (read_log(d) for d in (expected, got, other_order))
    for kind in {kind for _, kind in a}:
        keys = [key for key in a if key[1] == kind and key in noise]  # what the noise run has measured too
        allowed = 10 * max([1e-6 if kind == "train" else 1e-4, *(abs(a[key] - noise[key]) for key in keys)])
        for key in keys:
            assert abs(a[key] - b[key]) <= allowed, f"{key}: {a[key]} and {b[key]}, noise {allowed / 10:.1e}"
    if step is not None:
        wa, wb, wn = (
            torch.load(Path(d) / f"model_{step:05d}.pt", weights_only=True)["model"]
            for d in (expected, got, other_order)
        )
        noise = max(largest_difference(wa, wn), torch.finfo(torch.float32).eps)  # a float32 rounding, if not 0
        assert largest_difference(wa, wb) <= 10 * noise, f"step {step}: the weights part by more than 10 x {noise:.1e}"


def hf_gpt2(std=None, **config):
    """A random GPT-2 in transformers with these GPT2Config fields: seeded, dropout off, in eval mode. With std, every
    tensor is drawn around its init's centre (LayerNorm gains 1, the rest 0) with that spread, so that each one a
    copy or a gradient misses shows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**config, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    if std:
        with torch.no_grad():
            for name, p in hf.named_parameters():
                gain = ".ln_" in name and name.endswith(".weight")
                p.normal_(1.0 if gain else 0.0, std)
    return hf


def sample_stdout(model, prompt, seed, max_new_tokens, top_k=50):
    """What sample.py prints for one sample (its default --temperature 1) and the new tokens: generate's whole
    sequence, decoded at once."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    idx = torch.tensor([enc.encode(prompt)])
    out = model.generate(idx, max_new_tokens, top_k=top_k, generator=torch.Generator().manual_seed(seed))
    return enc.decode(out[0].tolist()) + "\n", out[0, idx.size(1) :].tolist()


def read_log(log_dir):
    """log.txt as {(step, kind): value}."""
    entries = {}
    for line in (Path(log_dir) / "log.txt").read_text().splitlines():
        step, kind, value = line.split()[:3]
        entries[int(step), kind] = float(value)
    return entries


def snapshot(*folders):
    """Each file's sha256 and each folder under these: anything created, changed or removed shows."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for f in folders
        for p in sorted(Path(f).rglob("*"))
    }


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def tiny():
    """The flags of the tiny training run."""
    return list(TINY)


@pytest.fixture(scope="session")
def run():
    """run(script, *args, torchrun=0, cwd=None, env=None): the script's CompletedProcess (text stdout and stderr)."""
    return run_script


@pytest.fixture(scope="session")
def train():
    """train(*args, torchrun=0, ...): train_gpt2.py with these flags."""
    return lambda *args, **kwargs: run_script("train_gpt2.py", *args, **kwargs)


@pytest.fixture(scope="session")
def start():
    """start(script, *args, torchrun=0, env=None, **popen): the script running in the background (a Popen, text
    pipes); read_until(proc, prefix) reads its stdout up to a line."""
    return start_script


@pytest.fixture(scope="session")
def lines_until():
    """lines_until(proc, prefix): a started script's stdout lines up to the first starting with prefix."""
    return read_until


@pytest.fixture(scope="session")
def same_run():
    """same_run(expected_log_dir, log_dir, step, parts=("model",)): asserts the second run repeats the first bitwise."""
    return assert_same_run


@pytest.fixture(scope="session")
def agree_within_noise():
    """agree_within_noise(expected_log_dir, log_dir, other_order_log_dir, step=None): asserts the two runs agree
    within ten times the noise between the first and the third."""
    return assert_agree_within_noise


@pytest.fixture(scope="session")
def random_hf_gpt2():
    """random_hf_gpt2(std=None, **GPT2Config fields): a seeded random GPT-2 in transformers, dropout off."""
    return hf_gpt2


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A random GPT-2 of the micro preset's shape (the tiny flags' --model micro agrees with it) with GPT-2's 50257
    rows, in transformers' save_pretrained format: as OpenAI's weights are loaded. Its weights are spread wide enough
    that its predictions vary."""
    folder = tmp_path_factory.mktemp("tiny_hf")
    hf_gpt2(std=0.1, vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sample_stdout_of():
    """sample_stdout_of(model, prompt, seed, max_new_tokens, top_k=50): (what sample.py prints, the new tokens)."""
    return sample_stdout


@pytest.fixture(scope="session")
def log_of():
    """log_of(log_dir): its log.txt as {(step, kind): value}."""
    return read_log


def assert_bits_per_byte(log, shards, n_tokens):
    """Every val_bpb in `log` (read_log's) is its val loss in bits per UTF-8 byte of the text the val split's first
    n_tokens targets decode to, counted here with tiktoken, <|endoftext|> as no text: loss / ln 2 x tokens / bytes.
    Within the log's rounding (4 decimals each)."""
    import math

    import numpy as np
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    val = np.load(min(Path(shards).glob("*_val_*.npy")))  # shard 0: the val split
    targets = [t for t in val[1 : n_tokens + 1].tolist() if t != enc.eot_token]
    factor = n_tokens / len(enc.decode_bytes(targets)) / math.log(2)
    for (step, kind), value in log.items():
        if kind == "val":
            assert abs(log[step, "val_bpb"] - value * factor) <= 1e-4, (step, log[step, "val_bpb"], value * factor)


@pytest.fixture(scope="session")
def bits_per_byte_of():
    """bits_per_byte_of(log, shards, n_tokens): asserts each val_bpb of log_of's dict against an independent count."""
    return assert_bits_per_byte


@pytest.fixture(scope="session")
def snapshot_of():
    """snapshot_of(*folders): what is in them, to compare before and after."""
    return snapshot


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"offline data folder {SHARED_DATA} is missing: put ../shared/data beside the checkout, or name it in OFFLINE_DATA"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare_shards(shared_data, tmp_path_factory):
    """Tiny Shakespeare as token shards in the format fineweb.py writes: a 32,768-token val shard, then two
    train shards of unequal size (so batches cross a shard boundary). Tokenized here, independently
    of fineweb.py: [EOT] + encode_ordinary(text), uint16."""
    import numpy as np
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    tokens = np.array([enc.eot_token] + enc.encode_ordinary(text), dtype=np.uint16)
    out = tmp_path_factory.mktemp("shakespeare")
    np.save(out / "shakespeare_val_000000.npy", tokens[:32768])
    np.save(out / "shakespeare_train_000001.npy", tokens[32768:100003])
    np.save(out / "shakespeare_train_000002.npy", tokens[100003:])
    return out
