"""train_gpt2.py --init_from: fine-tuning from Hugging Face weights (a small random GPT-2 saved here with
save_pretrained, as OpenAI's are loaded) or from one of our checkpoints (bad input: test_errors.py)."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.xdist_group("finetune")  # one worker: its module fixtures are computed once

STEPS = ["--max_steps", "20", "--eval_interval", "20"]


@pytest.fixture(scope="module")
def finetuned(train, tiny, shakespeare_shards, tiny_hf, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("finetuned")
    proc = train(*tiny, *STEPS, "--data_dir", shakespeare_shards, "--log_dir", log_dir, "--init_from", tiny_hf)
    assert proc.returncode == 0, proc.stderr
    return log_dir


def hf_val_loss(folder, shards, n_tokens, T):
    """transformers' mean next-token loss over the first n_tokens of the val split, in rows of T."""
    from transformers import GPT2LMHeadModel

    tokens = torch.from_numpy(np.load(shards / "shakespeare_val_000000.npy")[: n_tokens + 1].astype(np.int64))
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = hf(tokens[:-1].view(-1, T)).logits
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tokens[1:]).item()


def test_step_0_val_loss_is_transformers_loss_and_fine_tuning_lowers_it(finetuned, tiny_hf, shakespeare_shards, log_of):
    log = log_of(finetuned)
    assert abs(log[0, "val"] - hf_val_loss(tiny_hf, shakespeare_shards, 4096, 64)) < 1e-4  # log.txt keeps 4 decimals
    assert log[20, "val"] < log[0, "val"] - 0.5
    checkpoint = torch.load(finetuned / "model_00020.pt", weights_only=True)
    assert checkpoint["config"]["vocab_size"] == 50257  # OpenAI's rows, unpadded: no padded row takes probability


def test_from_our_checkpoint_step_0_is_its_val_loss_in_a_log_dir_of_its_own(
    finetuned, train, tiny, shakespeare_shards, log_of, snapshot_of, tmp_path
):
    before = snapshot_of(finetuned)
    proc = train(
        *tiny,
        "--max_steps",
        "2",
        "--data_dir",
        shakespeare_shards,
        "--log_dir",
        tmp_path / "log",
        "--init_from",
        finetuned,
    )
    assert proc.returncode == 0, proc.stderr
    saved = torch.load(finetuned / "model_00020.pt", weights_only=True)["val_loss"]
    assert f"{log_of(tmp_path / 'log')[0, 'val']:.4f}" == f"{saved:.4f}"
    assert snapshot_of(finetuned) == before


def test_resuming_a_fine_tune_continues_from_its_checkpoint_without_its_flags(
    finetuned, train, tiny, shakespeare_shards, log_of, tmp_path
):
    shutil.copytree(finetuned, tmp_path / "log")
    # the architecture and the micro-batch are the checkpoint's, so the flags may leave them out
    bare = [
        a
        for i, a in enumerate(tiny)
        if a not in ("--model", "--batch_size") and tiny[i - 1] not in ("--model", "--batch_size")
    ]
    proc = train(
        *bare,
        *STEPS,
        "--max_steps",
        "22",
        "--data_dir",
        shakespeare_shards,
        "--log_dir",
        tmp_path / "log",
        "--init_from",
        "gpt2",
        "--resume",
    )  # gpt2 would need the network: it is not read
    assert proc.returncode == 0, proc.stderr
    assert "resuming: --init_from gpt2 is not used, the checkpoint holds the weights" in proc.stdout
    assert "512 tokens per step = 4 x 64 x 1 processes x 2 accumulation steps" in proc.stdout
    assert (
        "flags changed since that checkpoint, the run goes on with the new values: --max_steps 20 -> 22"
        in proc.stdout.splitlines()
    )
    assert sorted(step for step, kind in log_of(tmp_path / "log") if kind == "train") == list(range(22))


def test_a_fine_tuned_checkpoint_samples_scores_and_exports(finetuned, run, shared_data, tmp_path):
    sample = run(
        "sample.py", "--checkpoint", finetuned, "--device", "cpu", "--num_samples", "1", "--max_new_tokens", "8"
    )
    assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr
    score = run(
        "hellaswag.py",
        "--checkpoint",
        finetuned,
        "--limit",
        "8",
        "--data_dir",
        shared_data / "hellaswag",
        "--device",
        "cpu",
    )
    assert score.returncode == 0 and "hellaswag val: n=8" in score.stdout, score.stderr
    export = run("export_hf.py", finetuned, tmp_path / "hf")
    assert export.returncode == 0, export.stderr
    from transformers import GPT2LMHeadModel

    assert GPT2LMHeadModel.from_pretrained(tmp_path / "hf").config.vocab_size == 50257


def hf_own_loss(folder, shards, n_seqs, T):
    """transformers' own loss (it shifts the labels itself), in float64, over the val split's first n_seqs rows of
    T + 1 tokens: each row's T next-token predictions, as train_gpt2.py scores them."""
    from transformers import GPT2LMHeadModel

    tokens = torch.from_numpy(np.load(shards / "shakespeare_val_000000.npy").astype(np.int64))
    rows = torch.stack([tokens[i * T : i * T + T + 1] for i in range(n_seqs)])
    hf = GPT2LMHeadModel.from_pretrained(folder).double().eval()
    with torch.no_grad():
        return hf(rows, labels=rows).loss.item()


def test_eval_only_scores_the_weights_as_transformers_does_and_writes_only_reference_json(
    train, tiny_hf, shakespeare_shards, shared_data, snapshot_of, bits_per_byte_of, tmp_path
):
    log_dir = tmp_path / "run"  # a run's log dir: it gains reference.json, nothing else changes
    log_dir.mkdir()
    (log_dir / "log.txt").write_text("0 train 10.900000\n0 val 10.8000\n")
    before = snapshot_of(tmp_path, shakespeare_shards)
    hella = ["--hellaswag_dir", shared_data / "hellaswag", "--hellaswag_limit", "8"]
    flags = ["--data_dir", shakespeare_shards, "--log_dir", log_dir, "--seq_len", "64", "--val_tokens", "4096"]
    proc = train("--eval_only", "--init_from", tiny_hf, *flags, *hella, "--dtype", "float32", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    after = snapshot_of(tmp_path, shakespeare_shards)
    assert {path: digest for path, digest in after.items() if path.name != "reference.json"} == before
    scores = json.loads((log_dir / "reference.json").read_text())
    assert (scores["model"], scores["val_tokens"], scores["seq_len"], scores["hellaswag_examples"]) == (
        str(tiny_hf),
        4096,
        64,
        8,
    )
    # float32 against float64: apart by the float32 rounding of a loss near 11, not by a mis-scored token
    assert abs(scores["val_loss"] - hf_own_loss(tiny_hf, shakespeare_shards, 64, 64)) < 1e-5
    bits_per_byte_of({(0, "val"): scores["val_loss"], (0, "val_bpb"): scores["val_bpb"]}, shakespeare_shards, 4096)
    assert 0 <= scores["hellaswag"] <= 1 and f"| {scores['val_loss']:.4f} | {scores['val_bpb']:.4f} |" in proc.stdout

    import plot

    assert plot.reference(log_dir) == (f"{tiny_hf} on this val split", scores["val_loss"], scores["hellaswag"])
    assert plot.reference(tmp_path)[0] == "OpenAI GPT-2 124M (build-nanogpt's FineWeb-Edu val shard)"  # no file
    if importlib.util.find_spec("matplotlib"):  # optional; CI installs it
        assert plot.plot_run(log_dir) == log_dir / "plot.png"
