"""The paths a GPU takes: --dtype auto, float16 with its gradient scaler and bfloat16 against float32, the micro-batch
fitter under a 16 GB card's memory, out of memory in one line, torch.compile against eager, the compiled decode step,
SIGTERM then --resume, torchrun (NCCL between GPUs), both recipes. Each test takes a device: "cpu" runs where the path
exists on a CPU, so that the suite keeps the test's logic honest (the recipe that other tests leave out there); "cuda"
is skipped where there is no GPU (the suite's only skip) and runs on one in tools/gpu_check.py. float16 runs on a CPU
too, emulated: slowly, so in small steps."""

import dataclasses
import functools
import importlib.util
import re
import shutil
import signal
from pathlib import Path

import pytest
import tiktoken
import torch

from hardware import fit_batch_size
from train_gpt2 import GPT, PADDED_VOCAB_SIZE, RECIPES, SWITCHES, GPTConfig

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: tools/gpu_check.py runs it")
CUDA = pytest.param("cuda", marks=NEEDS_CUDA)
DEVICES = ["cpu", CUDA]
RECIPE_NAMES = ["gpt2", "modern"]


def on_devices(*cpu_recipes):
    """(device, recipe) cases: both recipes on CUDA, on the CPU those named (where other tests run the others)."""
    cuda = [pytest.param("cuda", recipe, marks=NEEDS_CUDA) for recipe in RECIPE_NAMES]
    return [*(("cpu", recipe) for recipe in cpu_recipes), *cuda]


# float16 matmuls are emulated on CPUs: 32 tokens a step, a 32-wide model, the val loss only at the end
SMALL = ["--batch_size", "1", "--seq_len", "16", "--total_batch_size", "32", "--n_embd", "32", "--val_tokens", "64",
         "--eval_interval", "0", "--max_steps", "12", "--checkpoint_interval", "6"]  # fmt: skip
GiB = 2**30
# what a T4 or a 16 GB V100 gives a process: the fitter then has to choose a smaller micro-batch than 64
CAPPED = """import runpy, sys
import torch
torch.cuda.set_per_process_memory_fraction(min(1.0, {cap} / torch.cuda.get_device_properties(0).total_memory))
sys.path.insert(0, {repo!r})
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def on(device):
    """The flags that move the tiny run to device. No compile (the default on CUDA) but where a test asks for it."""
    return ["--device", device, "--no-compile"]


def train_losses(log):
    return [value for (step, kind), value in sorted(log.items()) if kind == "train"]


def capped_train(device, repo, tmp_path):
    """train_gpt2.py; on CUDA with the process's memory capped at 16 GiB, as a 16 GB card has."""
    if device == "cpu":
        return "train_gpt2.py"
    wrapper = tmp_path / "capped_train.py"
    wrapper.write_text(CAPPED.format(cap=16 * GiB, repo=str(repo), script=str(repo / "train_gpt2.py")))
    return wrapper


@pytest.fixture
def repeats(same_run, agree_within_noise):
    """repeats(expected, got, step, parts, again=None): the run in `got` repeats `expected`, bitwise (a CPU's kernels
    are deterministic). On CUDA `again` is the same run once more: bitwise where it is bitwise `expected`, else within
    the noise between the two (kernels that add in a varying order)."""

    def check(expected, got, step, parts=("model",), again=None):
        if again is not None:
            try:
                same_run(expected, again, step, parts)
            except AssertionError:
                agree_within_noise(expected, got, again, step)
                return
        same_run(expected, got, step, parts)

    return check


# --- precision -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def precision_run(train, tiny, shakespeare_shards, tmp_path_factory):
    """precision_run(device, recipe, dtype, again=False): (log dir, stdout) of 12 small steps with a checkpoint at
    step 6, run once per test process (again: a second time, for the noise)."""

    @functools.cache
    def run(device, recipe, dtype, again=False):
        log_dir = tmp_path_factory.mktemp(f"{device}_{recipe}_{dtype}")
        flags = ["--data_dir", shakespeare_shards, "--log_dir", log_dir, "--dtype", dtype, "--recipe", recipe]
        proc = train(*tiny, *SMALL, *flags, *on(device))
        assert proc.returncode == 0, proc.stderr
        return log_dir, proc.stdout

    return run


@pytest.mark.xdist_group("precision")  # one worker: the runs are made once
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_float16_follows_float32_and_shows_its_loss_scale(device, recipe, precision_run, log_of):
    stdout = precision_run(device, recipe, "float16")[1]
    assert ("rope=True" in stdout) == (recipe == "modern")
    assert "float16 autocast (--dtype float16)" in stdout
    assert (
        len(re.findall(r"^step \d+ .* \| scale 65536$", stdout, re.MULTILINE)) == 12
    )  # no overflow at the usual scale
    # float16 keeps 3 more bits than bfloat16: it follows float32 at least as closely as bfloat16 does, measured here on
    # the same steps (within 2x: one run's rounding against another's). A loss scale left on a gradient errs by orders
    losses, norms = {}, {}
    for dtype in ("float32", "float16", "bfloat16"):
        log_dir, out = precision_run(device, recipe, dtype)
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


@pytest.mark.xdist_group("precision")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_float16_resume_repeats_the_uninterrupted_run(
    device, recipe, precision_run, train, repeats, tiny, shakespeare_shards, tmp_path
):
    log_dir, _ = precision_run(device, recipe, "float16")
    copy = resume_copy(log_dir, tmp_path)
    flags = ["--data_dir", shakespeare_shards, "--log_dir", copy, "--dtype", "float16", "--recipe", recipe]
    proc = train(*tiny, *SMALL, *flags, *on(device), "--resume")
    assert proc.returncode == 0, proc.stderr
    again = precision_run(device, recipe, "float16", again=True)[0] if device == "cuda" else None
    repeats(log_dir, copy, 12, parts=("model", "optimizer", "scaler"), again=again)


@pytest.mark.xdist_group("precision")
@pytest.mark.parametrize("device", DEVICES)
def test_an_overflow_skips_the_step_lowers_the_scale_and_the_run_goes_on(
    device, precision_run, train, tiny, shakespeare_shards, tmp_path
):
    log_dir, _ = precision_run(device, "gpt2", "float16")
    copy = resume_copy(log_dir, tmp_path, edit=lambda checkpoint: checkpoint["scaler"].update(scale=2.0**40))
    flags = ["--max_steps", "9", "--checkpoint_interval", "9", "--data_dir", shakespeare_shards, "--log_dir", copy]
    proc = train(*tiny, *SMALL, *flags, *on(device), "--dtype", "float16", "--resume")
    assert proc.returncode == 0, proc.stderr
    skipped = re.findall(
        r"^step (\d+) .* \| scale (\d+) \| skipped: float16 gradients overflowed", proc.stdout, re.MULTILINE
    )
    assert skipped == [("6", str(2**40)), ("7", str(2**39)), ("8", str(2**38))]  # halved at each overflow
    before, after = (torch.load(copy / name, weights_only=True) for name in ("model_00006.pt", "model_00009.pt"))
    torch.testing.assert_close(after["model"], before["model"], rtol=0, atol=0)  # three steps, no update
    assert after["scaler"]["scale"] == 2.0**37


# --- memory ----------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("device", [CUDA])  # a CPU fits nothing: its B is the largest that divides the step
def test_the_fitter_picks_a_micro_batch_whose_steps_fit_a_16_gb_card(device, run, repo, shakespeare_shards, tmp_path):
    flags = ["--model", "gpt2", "--seq_len", "1024", "--total_batch_size", "65536", "--max_steps", "2", "--no-compile"]
    flags += ["--val_tokens", "8192", "--hellaswag_interval", "0", "--sample_interval", "0", "--device", "cuda"]
    proc = run(
        capped_train("cuda", repo, tmp_path), *flags, "--data_dir", shakespeare_shards, "--log_dir", tmp_path / "log"
    )
    assert proc.returncode == 0, proc.stderr
    fitted = re.search(
        r"^--batch_size (\d+): the largest of 64, 32, 16 \.\.\. whose step fits", proc.stdout, re.MULTILINE
    )
    B = int(fitted.group(1))
    # 64 rows of 1024 tokens of GPT-2 124M need more than 16 GiB, and one row far less
    assert 1 < B < 64 and f"= {B} x 1024 x 1 processes x {64 // B} accumulation steps" in proc.stdout, proc.stdout
    assert len(re.findall(r"^step \d+ \| loss", proc.stdout, re.MULTILINE)) == 2  # the real steps ran in that memory


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flags, says", [
    (["--batch_size", "4096", "--total_batch_size", "262144"], "out of memory (micro, 3.3M parameters, --batch_size 4096, --seq_len 64): pass --batch_size 2048 or less"),
    (["--batch_size", "1", "--total_batch_size", "64", "--n_embd", str(2**20)], "out of memory (micro, 26,441,190.2M parameters, --batch_size 1, --seq_len 64): a shorter --seq_len"),
])  # fmt: skip
def test_out_of_memory_is_one_line_naming_the_batch(device, flags, says, run, repo, tiny, shakespeare_shards, tmp_path):
    script = capped_train(device, repo, tmp_path)
    proc = run(script, *tiny, *on(device), *flags, "--data_dir", shakespeare_shards, "--log_dir", tmp_path / "log")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(says), proc.stderr


# --- torch.compile ---------------------------------------------------------------------------------------------


@pytest.mark.xdist_group("precision")  # its float32 run
def test_compile_without_a_compiler_says_so_once_and_trains_eagerly(
    precision_run, train, tiny, shakespeare_shards, log_of, tmp_path
):
    f32, _ = precision_run("cpu", "gpt2", "float32")
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_a_compiled_run_takes_eager_steps_evaluates_scores_hellaswag_samples_and_plots(
    device, recipe, train, run, log_of, agree_within_noise, tiny, shakespeare_shards, shared_data, tmp_path
):
    hella = ["--hellaswag_dir", shared_data / "hellaswag", "--hellaswag_limit", "40"]
    args = [*tiny, *on(device), "--data_dir", shakespeare_shards, "--total_batch_size", "256", "--max_steps", "2"]
    args += ["--eval_interval", "1", "--recipe", recipe]
    compiled = train(
        *args,
        *hella,
        "--hellaswag_interval",
        "2",
        "--sample_interval",
        "1",
        "--compile",
        "--log_dir",
        tmp_path / "compiled",
    )
    assert compiled.returncode == 0, compiled.stderr
    assert "compile on" in compiled.stdout and compiled.stdout.count("sample ") == 4
    assert ("rope=True" in compiled.stdout) == (recipe == "modern")
    log = log_of(tmp_path / "compiled")
    assert [s for s, kind in log if kind == "val"] == [0, 1, 2] and [s for s, kind in log if kind == "hella"] == [0, 2]
    # inductor fuses and reorders the float32 arithmetic: within the noise of the same steps summed in another order
    # (2 micro-steps of 2 rows, not 1 of 4); a wrong kernel moves the losses by orders more
    for name, more in (("eager", []), ("other_order", ["--batch_size", "2"])):
        assert train(*args, *more, "--log_dir", tmp_path / name).returncode == 0
    # the weights too, but Muon's: its bfloat16 iterations round a last-bit difference of the compiled gradient into
    # a step one bfloat16 apart, where the noise run's gradient rounds the same as eager's (the losses then say it)
    weights = 2 if recipe == "gpt2" else None
    agree_within_noise(tmp_path / "eager", tmp_path / "compiled", tmp_path / "other_order", step=weights)
    # the in-training score of the final model equals hellaswag.py's on its checkpoint (uncompiled)
    score = run(
        "hellaswag.py",
        "--checkpoint",
        tmp_path / "compiled",
        "--limit",
        "40",
        "--dtype",
        "float32",
        "--device",
        device,
        "--data_dir",
        shared_data / "hellaswag",
    )
    assert score.returncode == 0, score.stderr
    assert score.stdout.strip().splitlines()[-1].endswith(f"acc_norm={log[2, 'hella']:.4f}")
    if importlib.util.find_spec("matplotlib"):  # optional; CI installs it
        from matplotlib.image import imread

        assert imread(tmp_path / "compiled" / "plot.png").shape[1] > 1000  # two panels: loss and HellaSwag


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_the_compiled_decode_step_gives_the_recomputed_tokens_past_the_context_without_recompiling(
    device, recipe, tmp_path, capsys
):
    from torch._dynamo.utils import counters

    import sample as sample_py

    switches = {k: v for k, v in RECIPES[recipe].items() if k in SWITCHES}
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=PADDED_VOCAB_SIZE, n_layer=2, n_head=4, n_embd=64, **switches))
    with torch.no_grad():  # weights far wider than the init's: greedy decoding wanders instead of repeating a token
        for name, p in model.named_parameters():
            gain = "ln_" in name and name.endswith(".weight")  # LayerNorm gains near 1
            p.normal_(1.0 if gain else 0.0, 0.1 if gain else 0.3)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, tmp_path / "model_00001.pt")
    torch._dynamo.reset()
    counters.clear()
    # the prompt's 8 tokens and 80 new ones: the window slides for the last 24
    args = [
        "--checkpoint",
        tmp_path,
        "--device",
        device,
        "--dtype",
        "float32",
        "--top_k",
        "1",
        "--max_new_tokens",
        "80",
    ]
    sample_py.main([*map(str, args), "--compile"])
    # every one-token step, at every position, one graph: static shapes, no recompile
    assert counters["stats"]["unique_graphs"] == 1
    if device == "cuda":  # replayed as a CUDA graph, not skipped (for a write to an unmarked input, say)
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])

    enc = tiktoken.get_encoding("gpt2")
    prompt = torch.tensor([enc.encode(PROMPT)], device=device)  # float32 matmuls as sample.py left them (TF32 on CUDA)
    recomputed = model.to(device).generate(prompt, 80, top_k=1, cache=False)[0].tolist()
    assert capsys.readouterr().out == enc.decode(recomputed) + "\n"
    assert len(set(recomputed[8:])) > 40  # not a degenerate repetition


PROMPT = "Hello, I'm a language model,"


def auto_precision(device):
    """What describe_run says of --dtype auto on this device, from an independent reading of the hardware: bf16 autocast
    where it is native (CUDA compute capability 8 and later; AVX-512's or AMX's bf16 instructions on a CPU), fp16 on
    CUDA 7.x's tensor cores, else float32."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        hardware, native, fp16 = f"CUDA compute capability {major}.{minor}", major >= 8, major == 7
    else:
        flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE).group(1).split()
        hardware, native, fp16 = "this CPU", bool({"avx512_bf16", "amx_bf16"} & set(flags)), False
    if native:
        return f"bfloat16 autocast (auto: {hardware} has native bf16)"
    if fp16:
        return f"float16 autocast (auto: {hardware} has fp16 tensor cores, no native bf16)"
    return f"float32 (auto: float32 on {hardware})"


# --- long runs: SIGTERM and --resume, torchrun -----------------------------------------------------------------


@pytest.mark.parametrize("device, recipe", on_devices("gpt2"))  # tests/test_modern.py resumes modern on a CPU
def test_a_run_in_auto_precision_resumes_after_sigterm_and_its_checkpoint_samples(
    device, recipe, train, run, start, lines_until, repeats, tiny, shakespeare_shards, tmp_path
):
    # a GPU takes a tiny step in milliseconds: a run long enough that the signal comes before its end
    steps = 12 if device == "cpu" else 300
    args = [*tiny, *on(device), "--data_dir", shakespeare_shards, "--total_batch_size", "256", "--recipe", recipe]
    args += ["--max_steps", steps, "--eval_interval", steps // 3, "--dtype", "auto"]
    proc = train(*args, "--log_dir", tmp_path / "uninterrupted")
    assert proc.returncode == 0, proc.stderr
    where = f"device {'cuda:0' if device == 'cuda' else 'cpu'}, {auto_precision(device)}, compile off"
    assert where in proc.stdout, proc.stdout
    proc = start("train_gpt2.py", *args, "--log_dir", tmp_path / "signalled")
    lines_until(proc, "step 5 |")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = re.fullmatch(
        r"interrupted by SIGTERM at step (\d+): saved \S+; --resume continues exactly", out.splitlines()[-1]
    )
    assert stopped and 6 <= int(stopped.group(1)) < steps, out
    resumed = train(*args, "--log_dir", tmp_path / "signalled", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {stopped.group(1)}" in resumed.stdout
    again = None
    if device == "cuda":  # the same run once more: the noise, if CUDA's kernels are not deterministic here
        assert train(*args, "--log_dir", tmp_path / "again").returncode == 0
        again = tmp_path / "again"
    repeats(tmp_path / "uninterrupted", tmp_path / "signalled", steps, parts=("model", "optimizer"), again=again)

    sample = run("sample.py", "--checkpoint", tmp_path / "signalled", "--device", device, "--max_new_tokens", "16")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith(PROMPT) and len(sample.stdout) > len(PROMPT) + 1, sample.stdout


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_ddp_takes_the_steps_of_one_process_with_as_many_micro_steps(
    device, recipe, train, agree_within_noise, log_of, bits_per_byte_of, tiny, shakespeare_shards, tmp_path
):
    # NCCL between GPUs (one each: as many processes as there are, up to 2), gloo between CPU processes. The DDP sync
    # must happen on the LAST micro-step: any other leaves a micro-step's gradient un-averaged, and the ranks' weights
    # drift apart. 127 val sequences: ranks and batches of 2 score uneven shares
    n = min(2, torch.cuda.device_count()) if device == "cuda" else 2
    args = [*tiny, *on(device), "--data_dir", shakespeare_shards, "--seq_len", "32", "--total_batch_size", "256"]
    args += ["--max_steps", "6", "--eval_interval", "3", "--val_tokens", str(127 * 32), "--recipe", recipe]
    runs = {
        "one": train(*args, "--batch_size", "2", "--log_dir", tmp_path / "one"),
        "ddp": train(*args, "--batch_size", "2", "--log_dir", tmp_path / "ddp", torchrun=n),
        # the noise: the same steps summed in another order (2 micro-steps of 4 rows), nothing else changed
        "other_order": train(*args, "--batch_size", "4", "--log_dir", tmp_path / "other_order"),
    }
    for name, proc in runs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    assert "4 accumulation steps" in runs["one"].stdout
    assert f"{n} processes x {4 // n} accumulation steps" in runs["ddp"].stdout
    assert len(runs["ddp"].stdout.split("step 0 | loss")) == 2  # rank 0 alone prints
    # rounding in another order grows through the steps (Muon's bfloat16 iterations most), as much on any CPU and
    # thread count as between DDP and one process; a micro-step's gradient left un-averaged moves the losses by orders more
    agree_within_noise(tmp_path / "one", tmp_path / "ddp", tmp_path / "other_order", step=6)
    bits_per_byte_of(log_of(tmp_path / "ddp"), shakespeare_shards, n_tokens=127 * 32)  # each rank's share together
