"""The GPU a learner has: float16 with a gradient scaler, a micro-batch that fits, a compile that falls back,
and out-of-memory in one line. float16 autocast and the scaler run on a CPU, slowly (emulated: a few small steps)."""

import re
import shutil

import pytest
import torch

from hardware import fit_batch_size

pytestmark = pytest.mark.xdist_group("hardware")  # one worker: its module fixtures are computed once

# float16 matmuls are emulated on CPUs: 32 tokens a step, a 32-wide model, the val loss only at the end
SMALL = ["--batch_size", "1", "--seq_len", "16", "--total_batch_size", "32", "--n_embd", "32", "--val_tokens", "64",
         "--eval_interval", "0", "--max_steps", "12", "--checkpoint_interval", "6"]  # fmt: skip


def train_losses(log):
    return [value for (step, kind), value in sorted(log.items()) if kind == "train"]


@pytest.fixture(scope="module")
def runs(train, tiny, shakespeare_shards, tmp_path_factory):
    """The same 12 steps in float32, float16 and bfloat16, each with a checkpoint at step 6; for both recipes."""
    out = {}
    for recipe, dtype in [(r, d) for r in ("gpt2", "modern") for d in ("float32", "float16", "bfloat16")]:
        log_dir = tmp_path_factory.mktemp(f"{recipe}_{dtype}")
        flags = ["--data_dir", shakespeare_shards, "--log_dir", log_dir, "--dtype", dtype, "--recipe", recipe]
        proc = train(*tiny, *SMALL, *flags)
        assert proc.returncode == 0, proc.stderr
        out[recipe, dtype] = log_dir, proc.stdout
    return out


@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_float16_follows_float32_and_shows_its_loss_scale(recipe, runs, log_of):
    stdout = runs[recipe, "float16"][1]
    assert ("rope=True" in stdout) == (recipe == "modern")
    assert "float16 autocast (--dtype float16)" in stdout
    assert (
        len(re.findall(r"^step \d+ .* \| scale 65536$", stdout, re.MULTILINE)) == 12
    )  # no overflow at the usual scale
    # float16 keeps 3 more bits than bfloat16: it follows float32 at least as closely as bfloat16 does, measured here on
    # the same steps (within 2x: one run's rounding against another's). A loss scale left on a gradient errs by orders
    losses, norms = {}, {}
    for dtype in ("float32", "float16", "bfloat16"):
        log_dir, out = runs[recipe, dtype]
        losses[dtype] = train_losses(log_of(log_dir))
        norms[dtype] = [float(n) for n in re.findall(r"\| norm ([\d.]+)", out)]
    assert len(losses["float16"]) == len(norms["float16"]) == 12

    def deviation(values, dtype):
        return max(abs(a / b - 1) for a, b in zip(values[dtype], values["float32"], strict=True))

    for name, values in (("loss", losses), ("gradient norm", norms)):
        assert deviation(values, "float16") <= 2 * deviation(values, "bfloat16"), (name, values)


def resume_copy(log_dir, tmp_path, edit=None):
    """The run's log dir as it was after step 6: its later checkpoint gone, the step-6 one edited."""
    copy = tmp_path / "log"
    shutil.copytree(log_dir, copy)
    (copy / "model_00012.pt").unlink()
    if edit:
        checkpoint = torch.load(copy / "model_00006.pt", weights_only=True)
        edit(checkpoint)
        torch.save(checkpoint, copy / "model_00006.pt")
    return copy


@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_float16_resume_repeats_the_uninterrupted_run_bitwise(
    recipe, runs, train, same_run, tiny, shakespeare_shards, tmp_path
):
    log_dir, _ = runs[recipe, "float16"]
    copy = resume_copy(log_dir, tmp_path)
    flags = ["--data_dir", shakespeare_shards, "--log_dir", copy, "--dtype", "float16", "--recipe", recipe]
    proc = train(*tiny, *SMALL, *flags, "--resume")
    assert proc.returncode == 0, proc.stderr
    same_run(log_dir, copy, 12, parts=("model", "optimizer", "scaler"))


def test_an_overflow_skips_the_step_lowers_the_scale_and_the_run_goes_on(
    runs, train, tiny, shakespeare_shards, tmp_path
):
    log_dir, _ = runs["gpt2", "float16"]
    copy = resume_copy(log_dir, tmp_path, edit=lambda checkpoint: checkpoint["scaler"].update(scale=2.0**40))
    proc = train(
        *tiny,
        *SMALL,
        "--max_steps",
        "9",
        "--checkpoint_interval",
        "9",
        "--data_dir",
        shakespeare_shards,
        "--log_dir",
        copy,
        "--dtype",
        "float16",
        "--resume",
    )
    assert proc.returncode == 0, proc.stderr
    skipped = re.findall(
        r"^step (\d+) .* \| scale (\d+) \| skipped: float16 gradients overflowed", proc.stdout, re.MULTILINE
    )
    assert skipped == [("6", str(2**40)), ("7", str(2**39)), ("8", str(2**38))]  # halved at each overflow
    before, after = (torch.load(copy / name, weights_only=True) for name in ("model_00006.pt", "model_00009.pt"))
    torch.testing.assert_close(after["model"], before["model"], rtol=0, atol=0)  # three steps, no update
    assert after["scaler"]["scale"] == 2.0**37


def test_the_batch_fitter_halves_to_the_largest_batch_that_fits_and_keeps_the_total():
    T = 1024
    for total, memory_rows, expected in [
        (524288, 64, 64),
        (524288, 63, 32),
        (524288, 20, 16),
        (524288, 1, 1),
        (524288, 0, 0),
        (32768, 64, 32),
        (3 * 1024, 64, 1),
    ]:  # 32 or 3 sequences a step: B must divide them
        tried = []
        B = fit_batch_size(total // T, lambda b, tried=tried, rows=memory_rows: tried.append(b) or b <= rows)
        assert B == expected and tried == [tried[0] >> i for i in range(len(tried))], (total, memory_rows, tried)
        if B:
            assert total % (B * T) == 0  # more accumulation steps make up the same tokens a step


def test_compile_without_a_compiler_says_so_once_and_trains_eagerly(
    runs, train, tiny, shakespeare_shards, log_of, tmp_path
):
    f32, _ = runs["gpt2", "float32"]
    proc = train(
        *tiny,
        *SMALL,
        "--data_dir",
        shakespeare_shards,
        "--log_dir",
        tmp_path / "log",
        "--dtype",
        "float32",
        "--compile",
        env={"CXX": str(tmp_path / "no-such-c++")},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    notes = [line for line in proc.stdout.splitlines() if "compile" in line]
    assert (
        notes[0].startswith("torch.compile cannot compile here (No working C++ compiler") and "compile off" in notes[1]
    ), notes
    assert train_losses(log_of(tmp_path / "log")) == train_losses(log_of(f32))


@pytest.mark.parametrize("flags, says", [
    (["--batch_size", "4096", "--total_batch_size", "262144"], "out of memory (micro, 3.3M parameters, --batch_size 4096, --seq_len 64): pass --batch_size 2048 or less"),
    (["--batch_size", "1", "--total_batch_size", "64", "--n_embd", str(2**20)], "out of memory (micro, 26,441,190.2M parameters, --batch_size 1, --seq_len 64): a shorter --seq_len"),
])  # fmt: skip
def test_out_of_memory_is_one_line_naming_the_batch(train, tiny, shakespeare_shards, tmp_path, flags, says):
    proc = train(*tiny, *flags, "--data_dir", shakespeare_shards, "--log_dir", tmp_path / "log")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(says), proc.stderr
