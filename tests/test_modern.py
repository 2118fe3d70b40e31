"""--recipe modern: its parts against independent references (transformers' rotary embeddings, torch's Muon and
AdamW driven by hand, Muon's update written out in float64, a full recompute for the KV cache), each switch seen
acting inside the model (on, and off), the schedule and optimizer groups read back from a run's checkpoints, and a
modern run through resume, fine-tuning and export (DDP against accumulation: test_recipe.py; the default recipe,
unchanged: every other test)."""

import copy
import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

import hardware
from tokenizer import GPT2_VOCAB_SIZE
from train_gpt2 import (
    GPT,
    PADDED_VOCAB_SIZE,
    RECIPES,
    SWITCHES,
    GPTConfig,
    TrainConfig,
    make_model_config,
    parse_args,
    rotary,
    rotate,
)

MODERN = {k: v for k, v in RECIPES["modern"].items() if k in SWITCHES}
MODERN_CFG = TrainConfig(**{k: v for k, v in RECIPES["modern"].items() if k not in SWITCHES})


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
    cfg = dataclasses.replace(MODERN_CFG, max_lr=3e-3, muon_lr=0.02, embed_lr=0.006)
    muon_optimizer, adamw_optimizer = model.configure_optimizers(cfg, "cpu")
    names = {id(p): name for name, p in model.named_parameters()}
    muon = [names[id(p)] for group in muon_optimizer.param_groups for p in group["params"]]
    adamw = [names[id(p)] for group in adamw_optimizer.param_groups for p in group["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter, none twice
    matrices = [n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2]
    assert sorted(muon) == sorted(matrices) and {"transformer.wte.weight", "lm_head.weight"} <= set(adamw)
    assert {"transformer.h.0.attn.c_q.weight", "transformer.h.0.attn.c_v.weight"} <= set(muon)  # three matrices
    groups = muon_optimizer.param_groups + adamw_optimizer.param_groups
    lrs = {names[id(p)]: group["lr"] for group in groups for p in group["params"]}
    assert lrs["transformer.wte.weight"] == 0.006 and lrs["lm_head.weight"] == 3e-3 and lrs[muon[0]] == 0.02
    decays = {names[id(p)]: group["weight_decay"] for group in groups for p in group["params"]}
    assert decays["transformer.wte.weight"] == decays["lm_head.weight"] == 0.0  # --embed_weight_decay 0


def loss_of(model, seed):
    x = torch.randint(0, GPT2_VOCAB_SIZE, (4, 17), generator=torch.Generator().manual_seed(seed))
    return model(x[:, :-1], x[:, 1:])[1]


def test_both_recipes_optimizers_step_as_torchs_muon_and_adamw_driven_by_hand():
    for switches, recipe in ((MODERN, MODERN_CFG), ({}, TrainConfig())):
        model = tiny_gpt(**switches)
        ref = copy.deepcopy(model)
        cfg = dataclasses.replace(recipe, max_lr=3e-3, muon_lr=recipe.muon_lr and 0.02, embed_lr=0.006)
        optimizers = model.configure_optimizers(cfg, "cpu")
        params = dict(ref.named_parameters())
        # the recipes as their docs state them, on torch's own AdamW (Muon: hardware.Muon, tested against torch's
        # below)
        adamw = dict(betas=(0.9, 0.95), eps=1e-8, fused=True)
        if cfg.muon_lr:
            matrices = [p for n, p in params.items() if n.startswith("transformer.h.") and p.dim() == 2]
            groups = [dict(params=[params["lm_head.weight"]], weight_decay=0.0)]  # --embed_weight_decay 0
            groups += [dict(params=[params["transformer.wte.weight"]], weight_decay=0.0, lr=0.006)]
            assert len(matrices) + 2 == len(params)  # no biases, no norm gains
            hand = [hardware.Muon(matrices, lr=0.02, weight_decay=0.05), torch.optim.AdamW(groups, lr=3e-3, **adamw)]
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


def muon_written_out(weight, grads, momenta, lr, weight_decay):
    """Muon's steps as Jordan et al. (2024) and torch's docs state them, in float64: Nesterov momentum, five quintic
    Newton-Schulz iterations from the update scaled to norm 1, lr x sqrt(max(1, rows / cols)), decoupled decay."""
    a, b, c = 3.4445, -4.7750, 2.0315
    w, buffer = weight.double(), torch.zeros_like(weight, dtype=torch.float64)
    for g, m in zip(grads, momenta, strict=True):
        buffer = m * buffer + (1 - m) * g.double()
        x = (1 - m) * g.double() + m * buffer
        x = x.T if w.size(0) > w.size(1) else x
        x = x / x.norm()
        for _ in range(5):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        x = x.T if w.size(0) > w.size(1) else x
        w = w * (1 - lr * weight_decay) - lr * math.sqrt(max(1, w.size(0) / w.size(1))) * x
    return w


@pytest.mark.parametrize("shape", [(48, 160), (192, 48)])  # wide, tall
def test_our_muon_steps_as_torchs_within_torchs_own_bf16_rounding(shape):
    """hardware.Muon (float32 Newton-Schulz on a CPU without bf16, torch's step elsewhere) against torch.optim.Muon
    and the update written out in float64, over steps whose momentum the schedule changes and with weight decay."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=gen) * 0.02
    grads, momenta = [torch.randn(shape, generator=gen) for _ in range(4)], [0.85, 0.9, 0.95, 0.95]
    runs = {}
    for name, muon in (("ours", hardware.Muon), ("torch", torch.optim.Muon)):
        p = torch.nn.Parameter(weight.clone())
        optimizer = muon([p], lr=0.02, weight_decay=0.1)
        for g, m in zip(grads, momenta, strict=True):
            optimizer.param_groups[0]["momentum"], p.grad = m, g.clone()
            optimizer.step()
        runs[name] = p.detach().double()
    exact = muon_written_out(weight, grads, momenta, lr=0.02, weight_decay=0.1)
    torch_error, our_error = ((runs[k] - exact).abs().max().item() for k in ("torch", "ours"))
    assert torch_error < 0.02 * (exact - weight.double()).abs().max()  # the written-out steps are torch's
    assert our_error <= torch_error  # no further from them than torch's own bf16 iterations


def test_q_k_and_v_are_orthogonalized_as_three_matrices_not_one():
    """A modern model's first Muon step on c_q, c_k, c_v equals torch.optim.Muon's on the three matrices (within its
    bf16 rounding) and not torch's on them stacked as one, as the fused c_attn would be."""
    model = tiny_gpt(**{**MODERN, "zero_init": False})  # zero-initialized, the blocks would get no gradient
    (muon, _), before = model.configure_optimizers(MODERN_CFG, "cpu"), copy.deepcopy(model)
    loss_of(model, 0).backward()
    attention = model.transformer.h[0].attn
    parts = [attention.c_q.weight, attention.c_k.weight, attention.c_v.weight]
    grads, olds = (
        [p.grad.clone() for p in parts],
        [getattr(before.transformer.h[0].attn, c).weight for c in ("c_q", "c_k", "c_v")],
    )
    muon.step()

    def torchs(weights, grads):
        params = [torch.nn.Parameter(w.detach().clone()) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        torch.optim.Muon(params, lr=MODERN_CFG.muon_lr, weight_decay=0.0).step()
        return torch.cat([p.detach() for p in params])

    ours, three = torch.cat([p.detach() for p in parts]), torchs(olds, grads)
    one = torchs([torch.cat(olds)], [torch.cat(grads)])
    assert (ours - three).abs().max() < 0.1 * (one - three).abs().max()


IDX = torch.randint(0, GPT2_VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(3))


def random_model(**switches):
    """A tiny float64 model with these switches, every weight random: zero-initialized blocks would do nothing."""
    model = tiny_gpt(**switches)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.double().eval()


def logits_before_and_after(switches, change):
    model = random_model(**switches)
    with torch.no_grad():
        before = model(IDX)[0]
        change(model)
        return before, model(IDX)[0]


def scale_queries_and_keys(model):
    for block in model.transformer.h:
        block.attn.c_q.weight.mul_(7.0)
        block.attn.c_k.weight.mul_(7.0)


@pytest.mark.parametrize(
    "switch, change",
    [
        ("embed_norm", lambda model: model.transformer.wte.weight.mul_(7.0)),  # the blocks see unit RMS whatever
        ("qk_norm", scale_queries_and_keys),  # attention sees unit-RMS queries and keys whatever
    ],
)
def test_a_norm_switch_makes_the_logits_blind_to_the_scale_it_normalizes(switch, change):
    on, off = (logits_before_and_after({**MODERN, switch: value}, change) for value in (True, False))
    torch.testing.assert_close(on[1], on[0], atol=1e-9, rtol=0)
    assert (off[1] - off[0]).abs().max() > 1e-2


def test_rotary_positions_reach_every_block_as_offsets_alone():
    model = random_model(**MODERN)

    def hidden(pos):  # the model's forward written out, its blocks given the rotary angles of `pos`
        x = model.transformer.ln_e(model.transformer.wte(IDX))
        for block in model.transformer.h:
            x = block(x, rotary(pos, 64 // 4))
        return model.transformer.ln_f(x)

    pos = torch.arange(IDX.size(1))
    with torch.no_grad():
        torch.testing.assert_close(model.hidden_states(IDX), hidden(pos), atol=0, rtol=0)  # as the model computes
        torch.testing.assert_close(hidden(pos + 5), hidden(pos), atol=1e-5, rtol=0)  # float32 angles: ~1e-6 apart
        assert (hidden(2 * pos) - hidden(pos)).abs().max() > 1e-2  # the distances matter


def traffic(model, suffixes):
    """{name: (input, output)} of the modules whose names end in suffixes, as the model's forward on IDX passes them."""
    seen, names = {}, {module: name for name, module in model.named_modules()}
    for name, module in model.named_modules():
        if name.endswith(suffixes):
            module.register_forward_hook(lambda module, args, out: seen.__setitem__(names[module], (args[0], out)))
    with torch.no_grad():
        model(IDX)
    return seen


def test_rmsnorm_relu2_and_bias_act_where_the_model_has_them():
    for on in (True, False):
        model = random_model(**{**MODERN, "rmsnorm": on, "relu2": on, "bias": not on})
        seen = traffic(model, ("ln_1", "ln_2", "ln_e", "ln_f", "mlp.c_fc", "mlp.c_proj"))
        norms = [seen[name] for name in seen if ".ln_" in name or name.endswith("ln_f")]
        assert len(norms) == 2 * 2 + 2  # two a block, the embedding's, the final
        rms = [x / x.square().mean(-1, keepdim=True).sqrt() for x, _ in norms]
        assert all(torch.allclose(out, r, atol=1e-6) == on for (_, out), r in zip(norms, rms, strict=True))
        fc, (proj_in, _) = seen["transformer.h.0.mlp.c_fc"][1], seen["transformer.h.0.mlp.c_proj"]
        assert torch.allclose(proj_in, F.relu(fc).square()) == on
        assert torch.allclose(proj_in, F.gelu(fc, approximate="tanh")) != on
        assert any(name.endswith("bias") for name, _ in model.named_parameters()) != on


def test_an_untied_head_learns_apart_from_the_embedding():
    for tied in (True, False):
        model = random_model(**{**MODERN, "tied_head": tied})
        model(IDX, IDX)[1].backward()
        wte, head = model.transformer.wte.weight, model.lm_head.weight
        assert (wte is head) == tied  # one tensor, whose gradient sums the lookup's and the head's
        if not tied:  # the head's gradient reaches the head alone: only the rows the ids look up move in wte
            assert head.grad.abs().sum(-1).gt(0).sum() > IDX.unique().numel()
            assert wte.grad.abs().sum(-1).gt(0).sum() == IDX.unique().numel()


def test_head_size_sets_the_heads_unless_n_head_is_given():
    def heads(*flags):
        return make_model_config(parse_args(["--recipe", "modern", "--seq_len", "64", *flags])).n_head

    assert heads("--model", "gpt2") == 6 and heads("--model", "mini") == 2  # heads of 128 (modded-nanogpt's)
    assert heads("--model", "micro") == 1 and heads("--model", "mini", "--n_head", "4") == 4
    assert make_model_config(parse_args(["--model", "mini", "--seq_len", "64"])).n_head == 4  # GPT-2's: the preset's


def test_each_optimizer_group_gets_its_schedule_inside_a_run(train, tiny, shakespeare_shards, tmp_path):
    """Read back from a run's checkpoint after every step: the lr, momentum and weight decay each group stepped
    with, for both recipes, against the schedules written out."""
    args = [*tiny, "--data_dir", shakespeare_shards, "--total_batch_size", 256, "--max_steps", 10, "--warmup_steps", 2]
    args += ["--checkpoint_interval", 1, "--eval_interval", 0]
    modern = ["--recipe", "modern", "--max_lr", 3e-3, "--muon_momentum_warmup", 4, "--muon_weight_decay", 0.01]
    for recipe in ("modern", "gpt2"):
        done = train(*args, *(modern if recipe == "modern" else []), "--log_dir", tmp_path / recipe)
        assert done.returncode == 0, done.stderr
    wsd = [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]  # warmup 2 steps, flat, then to 0 over the last 40%
    cosine = [0.5, 1] + [0.1 + 0.45 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]  # to 10% at step 10
    for step in range(10):
        saved = {
            recipe: torch.load(tmp_path / recipe / f"model_{step + 1:05d}.pt")["optimizer"]
            for recipe in ("modern", "gpt2")
        }
        (muon,), adamw = saved["modern"][0]["param_groups"], saved["modern"][1]["param_groups"]
        assert muon["lr"] == pytest.approx(RECIPES["modern"]["muon_lr"] * wsd[step]) and muon["weight_decay"] == 0.01
        assert muon["momentum"] == pytest.approx(0.85 + 0.1 * min(1, step / 4))  # modded-nanogpt's warm-up
        peaks = {group["initial_lr"]: group for group in adamw}  # the head at --max_lr, the embedding at --embed_lr
        assert sorted(peaks) == [3e-3, RECIPES["modern"]["embed_lr"]] and all(g["weight_decay"] == 0.0 for g in adamw)
        assert all(group["lr"] == pytest.approx(peak * wsd[step]) for peak, group in peaks.items())
        decay, no_decay = saved["gpt2"][0]["param_groups"]
        assert decay["lr"] == no_decay["lr"] == pytest.approx(3e-3 * cosine[step])
        assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


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


def test_a_modern_run_resumed_longer_is_the_longer_run_bitwise_fine_tunes_exports_and_refuses_what_cannot_hold_it(
    train, run, same_run, tiny, shakespeare_shards, shared_data, tmp_path
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
    exported = run("export_hf.py", full, tmp_path / "hf")  # a NanoChatForCausalLM folder (test_export.py)
    assert exported.returncode == 0 and "AutoModelForCausalLM" in exported.stdout, exported.stderr
    again = train(*args, "--log_dir", tmp_path / "again", "--init_from", tmp_path / "hf", "--max_steps", 1)
    assert again.returncode == 0, again.stderr  # and back: fine-tuned, sampled, scored by transformers
    sampled = run("sample.py", "--init_from", tmp_path / "hf", "--max_new_tokens", 4, "--device", "cpu")
    assert sampled.returncode == 0 and "Hello" in sampled.stdout, sampled.stderr
    scored = run("hellaswag.py", "-m", tmp_path / "hf", "--limit", 4, "--data_dir", shared_data / "hellaswag")
    assert scored.returncode == 0 and "hellaswag val: n=4" in scored.stdout, scored.stderr
    gpt2_flags = [a for a in args if a not in ("--recipe", "modern")]
    refused = train(*gpt2_flags, "--log_dir", resumed, "--resume", "--max_steps", 7)
    assert refused.returncode == 1 and "ask for {'n_head': 2}" in refused.stderr  # the preset's heads, not 1 of 128
    assert "--recipe modern sets some" in refused.stderr
