"""--fsdp: the same steps as DDP with each rank holding half of the state, and checkpoints in the one format that
DDP, FSDP and sample.py read. One FSDP run with checkpoints, then its resumes, shared by the tests."""

import re

import pytest
import torch

from train_gpt2 import GPT, GPTConfig

pytestmark = pytest.mark.xdist_group("fsdp")  # one worker: its module fixtures are computed once

# 2 ranks x 2 micro-steps of B=2; 65 val sequences, so the ranks score 16 and 17 batches of them. The clip acts on
# the first two steps (norms 2.29 and 2.28). A clip acting on every step would part the runs by 2e-5: float32 rounds
# the global norm summed over shards a little differently (1e-6) from the norm over whole tensors, and AdamW grows that
STEPS = ["--batch_size", "2", "--seq_len", "32", "--total_batch_size", "256", "--max_steps", "10", "--eval_interval", "5",
         "--val_tokens", str(65 * 32), "--checkpoint_interval", "5", "--grad_clip", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(train, tiny, shakespeare_shards, shared_data, tmp_path_factory):
    """{name: (log dir, CompletedProcess)}: ddp and fsdp run 10 steps (fsdp also scores HellaSwag and samples), and
    one process the same steps in 4 micro-steps (the noise of summing in another order); fsdp_resumed and ddp_resumed
    continue fsdp's step-5 checkpoint under FSDP and under DDP."""
    tmp = tmp_path_factory.mktemp("fsdp")
    args = [*tiny, "--data_dir", shakespeare_shards, *STEPS]
    fsdp = [
        "--fsdp",
        "--hellaswag_interval",
        "5",
        "--hellaswag_limit",
        "8",
        "--hellaswag_dir",
        shared_data / "hellaswag",
        "--sample_interval",
        "5",
    ]
    out = {
        name: (tmp / name, train(*args, *flags, "--log_dir", tmp / name, torchrun=2))
        for name, flags in (("ddp", []), ("fsdp", fsdp))
    }
    out["one"] = tmp / "one", train(*args, "--log_dir", tmp / "one")
    lines = (tmp / "fsdp" / "log.txt").read_text().splitlines(keepends=True)
    for name, flags in (("fsdp_resumed", fsdp), ("ddp_resumed", [])):
        (tmp / name).mkdir()
        (tmp / name / "model_00005.pt").write_bytes((tmp / "fsdp" / "model_00005.pt").read_bytes())
        (tmp / name / "log.txt").write_text(
            "".join(line for line in lines if int(line.split()[0]) <= 7)
        )  # cut at step 7
        out[name] = tmp / name, train(*args, *flags, "--resume", "--log_dir", tmp / name, torchrun=2)
    for name, (_, proc) in out.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    return out


def column(proc, name):
    return [float(v) for v in re.findall(rf"\| {name} (\S+) \|", proc.stdout)]


def test_fsdp_takes_the_same_steps_as_ddp(runs, log_of, agree_within_noise):
    (ddp_dir, ddp), (fsdp_dir, fsdp), (one_dir, one) = runs["ddp"], runs["fsdp"], runs["one"]
    assert "2 processes x 2 accumulation steps" in fsdp.stdout
    log = log_of(fsdp_dir)
    assert [s for s, kind in log if kind == "hella"] == [0, 5, 10] and "sample 3:" in fsdp.stdout  # on whole weights
    assert (
        log_of(ddp_dir).keys() == {k for k in log if k[1] != "hella"} and len([k for k in log if k[1] == "train"]) == 10
    )
    agree_within_noise(ddp_dir, fsdp_dir, one_dir, step=10)
    # the global norm over all shards (each shard's alone would be ~30% less), within the noise as the losses
    norms, ddp_norms, one_norms = (column(proc, "norm") for proc in (fsdp, ddp, one))
    noise = max(1e-4, *(abs(a - b) for a, b in zip(ddp_norms, one_norms, strict=True)))
    assert all(abs(a - b) <= 10 * noise for a, b in zip(norms, ddp_norms, strict=True)) and norms[0] > 2
    assert len(fsdp.stdout.split("step 0 | loss")) == 2  # rank 0 alone prints


def test_each_rank_holds_half_of_the_state(runs):
    held = {
        name: int(
            re.search(r"([\d,]+) bytes of weights, gradients and AdamW moments per process", runs[name][1].stdout)[
                1
            ].replace(",", "")
        )
        for name in ("ddp", "fsdp")
    }
    with torch.device("meta"):
        n_params = GPT(
            GPTConfig(**torch.load(runs["fsdp"][0] / "model_00010.pt", weights_only=True)["config"])
        ).num_params()
    assert held["ddp"] == 16 * n_params  # fp32 weights, gradients and AdamW's two moments, whole on every rank
    assert held["fsdp"] == held["ddp"] // 2  # every dimension of the micro model splits evenly in two


def test_fsdp_checkpoint_has_the_format_of_ddp(runs):
    a, b = (torch.load(runs[name][0] / "model_00010.pt", weights_only=True) for name in ("ddp", "fsdp"))
    assert a.keys() == b.keys() and a["model"].keys() == b["model"].keys()  # the weights' values: the test above
    assert (
        b["model"]["lm_head.weight"].untyped_storage().data_ptr()
        == b["model"]["transformer.wte.weight"].untyped_storage().data_ptr()
    )
    (adamw_a,), (adamw_b,) = a["optimizer"], b["optimizer"]  # AdamW's alone
    assert adamw_b["param_groups"] == adamw_a["param_groups"]  # integer ids, in param_groups order
    assert adamw_b["state"].keys() == adamw_a["state"].keys()
    for i, state in adamw_a["state"].items():
        assert {k: v.shape for k, v in adamw_b["state"][i].items()} == {k: v.shape for k, v in state.items()}, i


def test_fsdp_checkpoint_resumes_under_fsdp_exactly_and_under_ddp(runs, same_run, agree_within_noise):
    (fsdp_dir, _), (same_dir, same), (ddp_dir, ddp) = runs["fsdp"], runs["fsdp_resumed"], runs["ddp_resumed"]
    assert "resuming from" in same.stdout and "step 4 |" not in same.stdout and "step 5 |" in same.stdout
    same_run(fsdp_dir, same_dir, 10)
    assert "--fsdp True -> False" in ddp.stdout
    agree_within_noise(ddp_dir, fsdp_dir, runs["one"][0], step=10)


def test_sample_reads_an_fsdp_checkpoint(runs, run, sample_stdout_of):
    path = runs["fsdp"][0] / "model_00010.pt"
    proc = run("sample.py", "--checkpoint", path, "--device", "cpu", "--dtype", "float32", "--max_new_tokens", 16)
    assert proc.returncode == 0, proc.stderr
    # the reference reads the file itself; that its weights are DDP's is test_fsdp_checkpoint_has_the_format_of_ddp's
    checkpoint = torch.load(path, weights_only=True)
    model = GPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    assert proc.stdout == sample_stdout_of(model.eval(), "Hello, I'm a language model,", 1337, 16)[0]
