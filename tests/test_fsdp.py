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
    """{name: (log dir, CompletedProcess)}: ddp and fsdp run 10 steps (fsdp also scores HellaSwag and samples);
    fsdp_resumed and ddp_resumed continue fsdp's step-5 checkpoint under FSDP and under DDP."""
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


def test_fsdp_takes_the_same_steps_as_ddp(runs, log_of):
    (ddp_dir, ddp), (fsdp_dir, fsdp) = runs["ddp"], runs["fsdp"]
    assert "2 processes x 2 accumulation steps" in fsdp.stdout
    a, b = log_of(ddp_dir), log_of(fsdp_dir)
    assert [s for s, kind in b if kind == "hella"] == [0, 5, 10] and "sample 3:" in fsdp.stdout  # on whole weights
    b = {k: v for k, v in b.items() if k[1] != "hella"}
    assert a.keys() == b.keys() and len([k for k in a if k[1] == "train"]) == 10
    for key in a:
        assert abs(a[key] - b[key]) < (1e-5 if key[1] == "train" else 2e-4), f"{key}: DDP {a[key]}, FSDP {b[key]}"
    norms = column(fsdp, "norm")
    # the global norm over all shards (each shard's alone would be ~30% less); float32 sums over 3.3M squares differ by 1e-4
    assert norms == pytest.approx(column(ddp, "norm"), rel=1e-3) and norms[0] > 2
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
    assert a.keys() == b.keys() and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-5, rtol=1e-4, msg=k)
    assert (
        b["model"]["lm_head.weight"].untyped_storage().data_ptr()
        == b["model"]["transformer.wte.weight"].untyped_storage().data_ptr()
    )
    assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]  # integer ids, in param_groups order
    assert b["optimizer"]["state"].keys() == a["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():
        assert {k: v.shape for k, v in b["optimizer"]["state"][i].items()} == {k: v.shape for k, v in state.items()}, i


def test_fsdp_checkpoint_resumes_under_fsdp_exactly_and_under_ddp(runs, log_of):
    (fsdp_dir, _), (same_dir, same), (ddp_dir, ddp) = runs["fsdp"], runs["fsdp_resumed"], runs["ddp_resumed"]
    assert "resuming from" in same.stdout and "step 4 |" not in same.stdout and "step 5 |" in same.stdout
    assert (same_dir / "log.txt").read_text() == (fsdp_dir / "log.txt").read_text()
    assert "--fsdp True -> False" in ddp.stdout
    a, b = log_of(fsdp_dir), log_of(ddp_dir)
    assert [k for k in a if k[1] == "train"] == [k for k in b if k[1] == "train"]
    assert all(abs(a[k] - b[k]) < 1e-5 for k in a if k[1] == "train"), (a, b)


def test_sample_reads_an_fsdp_checkpoint(runs, run):
    proc = run(
        "sample.py", "--checkpoint", runs["fsdp"][0], "--device", "cpu", "--max_new_tokens", "8", "--num_samples", "2"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
