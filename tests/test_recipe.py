"""The details of GPT-2's recipe that a reproduction can get subtly wrong and still train: the architecture to the
last activation, the init, the learning-rate schedule, clipping, gradient accumulation (in one process and under
DDP) and the val loss. Each is checked against an independent reference, tightly enough that the usual slip fails."""

import math
import re

import pytest
import torch
from torch.nn import functional as F

from train_gpt2 import (
    GPT,
    DataLoaderLite,
    GPTConfig,
    TrainConfig,
    evaluate,
    get_lr,
    make_model_config,
    parse_args,
    val_sequences,
)

pytestmark = pytest.mark.xdist_group("recipe")  # one worker: its module fixtures are computed once

HF_TRANSPOSED = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)  # Conv1D: (in, out)
FP32 = torch.autocast("cpu", enabled=False)


# --- the architecture and its init -----------------------------------------------------------------------------


def test_logits_equal_gpt2s_to_float64_precision_with_trained_size_weights(random_hf_gpt2):
    # weights the size of trained ones: pre-activations of the MLP reach several units, where the exact GELU and
    # GPT-2's tanh approximation of it part by ~1e-3
    size = dict(std=0.2, vocab_size=500, n_positions=32, n_embd=128, n_layer=2, n_head=4)
    hf = random_hf_gpt2(**size, activation_function="gelu_new").double()  # GPT-2's own activation
    ours = GPT(GPTConfig(block_size=32, vocab_size=500, n_layer=2, n_head=4, n_embd=128)).double().eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(hf.state_dict()[name].t() if name.endswith(HF_TRANSPOSED) else hf.state_dict()[name])
    idx = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, reference = ours(idx)[0], hf(idx).logits
        exact_gelu = (
            random_hf_gpt2(**size, activation_function="gelu").double()(idx).logits
        )  # the same weights with the exact GELU
    assert (exact_gelu - reference).abs().max() > 1e-4  # what an architecture slip of this size looks like here
    torch.testing.assert_close(logits, reference, atol=1e-9, rtol=0, msg="our logits are not GPT-2's")


def test_init_follows_gpt2_residual_scaling():
    # GPT-2 paper, section 2.3: weights N(0, 0.02), the residual projections scaled by 1/sqrt(N) for the N = 2 per
    # layer residual additions; biases 0, LayerNorm gains 1 (as in build-nanogpt)
    n_layer = 6
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=4096, n_layer=n_layer, n_head=6, n_embd=384))
    for name, p in model.named_parameters():
        if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
            expected = 0.02 / math.sqrt(2 * n_layer)
        elif name.endswith("bias") or ".ln_" in name or "ln_f" in name:
            expected = None
        else:
            expected = 0.02
        if expected is None:
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
        else:
            assert p.std().item() == pytest.approx(expected, rel=0.03), (
                f"{name}: std {p.std().item():.5f}, GPT-2 init {expected:.5f}"
            )
            assert abs(p.mean().item()) < expected / 10, name


# --- the learning-rate schedule ------------------------------------------------------------------------------


def test_learning_rate_warms_up_linearly_then_cosine_decays_to_a_tenth():
    cfg = TrainConfig(max_lr=6e-4, warmup_steps=10, max_steps=110)
    floor = 6e-5  # GPT-3 paper, appendix B: cosine decay down to 10% of the peak
    expected = {
        0: 6e-4 * 1 / 10,  # the first step already moves: (step + 1) / warmup of the peak
        4: 6e-4 * 5 / 10,
        9: 6e-4,  # the end of warmup
        10: 6e-4,  # the decay starts from the peak, cos(0) = 1
        60: floor + (6e-4 - floor) * 0.5 * (1 + math.cos(math.pi * 0.5)),  # half way
        110: floor,  # the end
        150: floor,  # past the end (a resumed run with a shorter --max_steps)
    }
    for step, lr in expected.items():
        assert get_lr(step, cfg) == pytest.approx(lr, rel=1e-12), (
            f"step {step}: lr {get_lr(step, cfg)}, the schedule says {lr}"
        )


# --- one optimizer step: accumulation and clipping --------------------------------------------------------------


def reference_step(tiny, shards, grad_clip):
    """The first optimizer step of the tiny run, computed here from its parts: the model as seeded, the first 8 rows of
    the train stream as ONE batch (the run takes them as 2 micro-steps of 4), the gradient of their mean loss, clipped
    to grad_clip by its global norm, and a plain (unfused) AdamW step. Returns (pre-clip norm, weights after)."""
    cfg = parse_args([*tiny, "--data_dir", str(shards), "--grad_clip", str(grad_clip), "--weight_decay", "10"])
    torch.manual_seed(cfg.seed)
    model = GPT(make_model_config(cfg))
    loader = DataLoaderLite(shards, "train", 8, cfg.seq_len, shuffle=cfg.shuffle, seed=cfg.seed)
    x, y = loader.next_batch()
    _, loss = model(x, y)
    loss.backward()
    params = list(model.parameters())
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    for p in params:
        p.grad *= min(1.0, grad_clip / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_'s rule
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},  # matrices decay (GPT-3)
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    torch.optim.AdamW(groups, lr=cfg.max_lr / cfg.warmup_steps, betas=(0.9, 0.95), eps=1e-8, foreach=False).step()
    return norm, model.state_dict()


@pytest.mark.parametrize("grad_clip", [1e-5, 100.0], ids=["clipped", "unclipped"])
def test_first_step_equals_one_batch_of_all_the_rows_clipped_by_the_global_norm(
    grad_clip, train, tiny, shakespeare_shards, tmp_path
):
    # 1e-5 scales every gradient to ~1e-9 an element, near AdamW's eps (1e-8), so the update shows the clip's scale
    # (AdamW would hide it otherwise); 100 clips nothing, so the update is the raw gradient's. A weight decay of 10
    # (lr x decay = 6e-3) shows which parameters decay: matrices and embeddings, not biases and LayerNorm gains
    proc = train(
        *tiny,
        "--data_dir",
        shakespeare_shards,
        "--log_dir",
        tmp_path,
        "--max_steps",
        "1",
        "--eval_interval",
        "0",
        "--grad_clip",
        str(grad_clip),
        "--weight_decay",
        "10",
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 accumulation steps" in proc.stdout
    logged_norm = float(re.search(r"step 0 \|.*\| norm (\S+) \|", proc.stdout).group(1))
    norm, expected = reference_step(tiny, shakespeare_shards, grad_clip)
    # the logged norm is the gradient's before clipping, of the mean loss over all 8 rows (not the micro-steps' sum)
    assert logged_norm == pytest.approx(norm, abs=1e-4), (
        f"logged norm {logged_norm}, the batch's gradient norm {norm:.4f}"
    )
    weights = torch.load(tmp_path / "model_00001.pt", weights_only=True)["model"]
    for name, value in expected.items():
        torch.testing.assert_close(
            weights[name],
            value,
            atol=2e-6,
            rtol=1e-4,
            msg=f"{name} after the first step is not one AdamW step on the clipped gradient of all 8 rows",
        )


# --- the val loss ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spread_model():
    """Weights wide enough that sequences' losses differ: a mean per batch then differs from the mean per token."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def per_token_mean(model, loader, n_seqs):
    x, y = loader.batch_at(0, n_seqs)
    with torch.no_grad():
        logits, _ = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()


def test_val_loss_is_the_mean_over_every_token_when_batches_are_uneven(spread_model, shakespeare_shards):
    loader = DataLoaderLite(shakespeare_shards, "val", 2, 32)
    expected = per_token_mean(spread_model, loader, 5)
    with torch.no_grad():
        batches = [loader.batch_at(i * 32, n) for i, n in ((0, 2), (2, 2), (4, 1))]
        batch_means = [spread_model(x, y)[1].item() for x, y in batches]
    assert abs(sum(batch_means) / 3 - expected) > 1e-3  # averaging per batch would be visibly wrong here
    got = evaluate(spread_model, loader, n_seqs=5, batch_size=2, device=torch.device("cpu"), autocast=FP32)
    assert got == pytest.approx(expected, abs=1e-5), f"val loss {got}, the per-token mean {expected}"


def test_val_loss_over_two_ranks_with_uneven_shares_is_the_mean_over_every_token(
    run, spread_model, repo, shakespeare_shards, tmp_path
):
    torch.save(spread_model.state_dict(), tmp_path / "model.pt")
    script = tmp_path / "val.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {str(repo)!r})\n"
        "import torch\n"
        "from train_gpt2 import GPT, GPTConfig, DataLoaderLite, evaluate\n"
        "torch.distributed.init_process_group('gloo')\n"
        "rank = torch.distributed.get_rank()\n"
        "model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)).eval()\n"
        f"model.load_state_dict(torch.load({str(tmp_path / 'model.pt')!r}))\n"
        f"loader = DataLoaderLite({str(shakespeare_shards)!r}, 'val', 2, 32, rank, 2)\n"
        "loss = evaluate(model, loader, 5, 2, torch.device('cpu'), torch.autocast('cpu', enabled=False))\n"  # 2 and 3 sequences
        "if rank == 0:\n"
        "    print(f'val {loss:.8f}')\n"
        "torch.distributed.destroy_process_group()\n"
    )
    proc = run(script, torchrun=2, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = float(re.search(r"val (\S+)", proc.stdout).group(1))
    expected = per_token_mean(spread_model, DataLoaderLite(shakespeare_shards, "val", 2, 32), 5)
    assert got == pytest.approx(expected, abs=1e-5), f"val loss {got} over 2 ranks, the per-token mean {expected}"


def test_bits_per_byte_count_the_scored_targets_bytes_and_no_bytes_for_end_of_text(tmp_path):
    import numpy as np
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    documents = ["First, a citizen.", "Speak, speak! ", "é and ü take two bytes each", "\n\n"]
    tokens = [t for doc in documents for t in [enc.eot_token, *enc.encode_ordinary(doc)]] * 8
    np.save(tmp_path / "docs_val_000000.npy", np.array(tokens, dtype=np.uint16))
    np.save(tmp_path / "docs_train_000001.npy", np.array(tokens, dtype=np.uint16))
    cfg = TrainConfig(data_dir=str(tmp_path), seq_len=16, val_tokens=10**6)
    n_seqs, bits_per_byte = val_sequences(cfg, DataLoaderLite(tmp_path, "val", 2, 16))
    targets = tokens[1 : n_seqs * 16 + 1]
    assert n_seqs == (len(tokens) - 1) // 16 and enc.eot_token in targets
    text = enc.decode_bytes([t for t in targets if t != enc.eot_token])  # <|endoftext|> is no text
    assert bits_per_byte == pytest.approx(n_seqs * 16 / len(text) / math.log(2), rel=1e-12)
