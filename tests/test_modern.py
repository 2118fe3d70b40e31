"""--recipe modern: its parts against independent references (transformers' rotary embeddings, torch's Muon and
AdamW driven by hand, a full recompute for the KV cache), and a modern run through resume, fine-tuning and the
refusals (DDP against accumulation: test_recipe.py; the default recipe, unchanged: every other test)."""

import copy

import torch
from torch.nn import functional as F

from tokenizer import GPT2_VOCAB_SIZE
from train_gpt2 import GPT, PADDED_VOCAB_SIZE, RECIPES, SWITCHES, GPTConfig, rotary, rotate

MODERN = {k: v for k, v in RECIPES["modern"].items() if k in SWITCHES}


def tiny_gpt(seed=0, **switches):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=PADDED_VOCAB_SIZE, n_layer=2, n_head=4, n_embd=64, **switches))


def test_rotary_embeddings_equal_transformers_on_the_same_queries_and_keys():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=128)
    q, k = torch.randn(2, 4, 10, 16, dtype=torch.float64), torch.randn(2, 4, 10, 16, dtype=torch.float64)
    pos = torch.arange(7, 17)  # not from 0: a decode step's positions
    cos, sin = LlamaRotaryEmbedding(config)(q.float(), pos[None])
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    ours = rotary(pos, 16)
    torch.testing.assert_close(rotate(q, *ours), q_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(rotate(k, *ours), k_ref, atol=1e-6, rtol=0)


def test_muon_takes_the_blocks_matrices_and_adamw_every_other_parameter_once():
    model = tiny_gpt(**MODERN)
    muon_optimizer, adamw_optimizer = model.configure_optimizers(0.1, 3e-3, "cpu", muon_lr=0.02, embed_lr=0.006)
    names = {id(p): name for name, p in model.named_parameters()}
    muon = [names[id(p)] for group in muon_optimizer.param_groups for p in group["params"]]
    adamw = [names[id(p)] for group in adamw_optimizer.param_groups for p in group["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter, none twice
    matrices = [n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2]
    assert sorted(muon) == sorted(matrices) and {"transformer.wte.weight", "lm_head.weight"} <= set(adamw)
    groups = muon_optimizer.param_groups + adamw_optimizer.param_groups
    lrs = {names[id(p)]: group["lr"] for group in groups for p in group["params"]}
    assert lrs["transformer.wte.weight"] == 0.006 and lrs["lm_head.weight"] == 3e-3 and lrs[muon[0]] == 0.02


def loss_of(model, seed):
    x = torch.randint(0, GPT2_VOCAB_SIZE, (4, 17), generator=torch.Generator().manual_seed(seed))
    return model(x[:, :-1], x[:, 1:])[1]


def test_both_recipes_optimizers_step_as_torchs_muon_and_adamw_driven_by_hand():
    for switches, muon_lr in ((MODERN, 0.02), ({}, None)):
        model = tiny_gpt(**switches)
        ref = copy.deepcopy(model)
        optimizers = model.configure_optimizers(0.1, 3e-3, "cpu", muon_lr=muon_lr, embed_lr=0.006)
        params = dict(ref.named_parameters())
        # the recipes as their docs state them, on torch's own optimizers
        adamw = dict(betas=(0.9, 0.95), eps=1e-8, fused=True)
        if muon_lr:
            matrices = [p for n, p in params.items() if n.startswith("transformer.h.") and p.dim() == 2]
            others = [p for p in params.values() if all(p is not m for m in matrices)]
            tables = [params["transformer.wte.weight"]]
            groups = [dict(params=[p for p in others if p.dim() == 2 and p is not tables[0]], weight_decay=0.1)]
            groups += [dict(params=tables, weight_decay=0.1, lr=0.006)]
            hand = [torch.optim.Muon(matrices, lr=0.02, weight_decay=0.0), torch.optim.AdamW(groups, lr=3e-3, **adamw)]
        else:
            groups = [dict(params=[p for p in params.values() if p.dim() >= 2], weight_decay=0.1)]
            groups += [dict(params=[p for p in params.values() if p.dim() < 2], weight_decay=0.0)]
            hand = [torch.optim.AdamW(groups, lr=3e-3, **adamw)]
        for step in range(4):
            loss_of(model, step).backward()
            loss_of(ref, step).backward()
            for opt in optimizers + hand:
                opt.step()
                opt.zero_grad()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, params[name], atol=0, rtol=0, msg=name)


def test_a_modern_model_decodes_with_its_cache_as_a_full_recompute_past_the_context():
    model = tiny_gpt(**{**MODERN, "zero_init": False}).eval()  # zero-initialized, every logit would tie
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    idx = torch.randint(0, GPT2_VOCAB_SIZE, (2, 10), generator=torch.Generator().manual_seed(1))
    ref = idx
    for _ in range(32 + 20):  # the window slides 22 tokens in: every position, and so every rotation, changes
        logits, _ = model(ref[:, -32:])
        ref = torch.cat((ref, logits[:, -1, :GPT2_VOCAB_SIZE].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(model.generate(idx, 32 + 20, top_k=1), ref)
    assert all(len(set(row)) > 20 for row in ref[:, 10:].tolist())


def test_the_logit_softcap_bounds_the_logits_and_the_zero_init_starts_uniform():
    model = tiny_gpt(**MODERN)
    logits, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    assert torch.equal(logits, torch.zeros_like(logits))  # a zero head: every token equally likely
    torch.testing.assert_close(loss, torch.tensor(PADDED_VOCAB_SIZE).log())
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 100.0)
    hidden = model.hidden_states(torch.zeros(1, 8, dtype=torch.long))
    capped, raw = model.logits(hidden), F.linear(hidden, model.lm_head.weight)
    assert capped.abs().max() <= 15.0 and raw.abs().max() > 100
    torch.testing.assert_close(capped, 15.0 * torch.tanh(raw / 15.0))


def test_a_modern_run_resumed_longer_is_the_longer_run_bitwise_fine_tunes_and_refuses_what_cannot_hold_it(
    train, run, same_run, tiny, shakespeare_shards, tmp_path
):
    args = [*tiny, "--data_dir", shakespeare_shards, "--recipe", "modern", "--total_batch_size", 256, "--max_steps", 6]
    args += ["--eval_interval", 3]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train(*args, "--log_dir", full).returncode == 0
    first = train(*args, "--log_dir", resumed, "--max_steps", 3)
    assert first.returncode == 0, first.stderr
    assert "rope=True" in first.stdout and "logit_softcap=15.0" in first.stdout
    again = train(*args, "--log_dir", resumed, "--resume")
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stderr
    # extending a run: the schedule follows the new max_steps (warmup alone so far, so the runs still agree)
    assert (
        "flags changed since that checkpoint, the run goes on with the new values: --max_steps 3 -> 6" in again.stdout
    )
    same_run(full, resumed, 6, parts=("model", "optimizer"))  # Muon's momenta among the optimizer's state

    hella = train(*args, "--log_dir", tmp_path / "other", "--init_from", full, "--max_steps", 1)
    assert hella.returncode == 0, hella.stderr  # one of our modern checkpoints fine-tunes as it is
    export = run("export_hf.py", full, tmp_path / "hf")
    assert export.returncode == 1 and "beyond GPT-2's architecture" in export.stderr
    assert not (tmp_path / "hf").exists()
    gpt2_flags = [a for a in args if a not in ("--recipe", "modern")]
    refused = train(*gpt2_flags, "--log_dir", resumed, "--resume", "--max_steps", 7)
    assert refused.returncode == 1 and "cannot be resumed" in refused.stderr and "--recipe" in refused.stderr
