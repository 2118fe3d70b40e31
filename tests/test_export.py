"""export_hf.py: the folder loads in transformers and computes our logits; its tokenizer is tiktoken's BPE."""

import dataclasses
import random

import pytest
import torch

from export_hf import export_hf
from tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer
from train_gpt2 import GPT, RECIPES, SWITCHES, GPTConfig

pytestmark = pytest.mark.xdist_group("export")  # one worker: its module fixtures are computed once


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64))  # padded, as trained
    with torch.no_grad():  # init leaves biases at 0 and LayerNorms at 1: randomize all so every copy is checked
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    out = tmp_path_factory.mktemp("exported")
    export_hf(model, out)
    return model, out


def test_exported_model_has_our_logits(exported):
    from transformers import GPT2LMHeadModel

    model, out = exported
    hf = GPT2LMHeadModel.from_pretrained(out)
    assert hf.config.vocab_size == 50257 and hf.config.n_positions == 64  # the padded rows are dropped
    idx = torch.randint(0, 50257, (3, 64))
    with torch.no_grad():  # in float64 both: what is left is a slip, not rounding
        torch.testing.assert_close(hf.double()(idx).logits, model.double()(idx)[0][..., :50257], atol=1e-9, rtol=0)
    assert torch.equal(GPT.from_pretrained(str(out)).lm_head.weight, model.float().lm_head.weight[:50257])  # and back


def test_q_k_v_as_three_matrices_export_fused_as_gpt2s(tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=64, split_qkv=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    export_hf(model, tmp_path / "hf")
    idx = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        logits = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").double()(idx).logits
        torch.testing.assert_close(logits, model.double()(idx)[0][..., :50257], atol=1e-9, rtol=0)


def varied_strings(shared_data):
    rng = random.Random(0)
    lines = [l for l in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if l.strip()]
    pool = "abcXYZ 019 \t\n\r.,;:'\"!?-_()[]{}<>/\\|@#$%^&*+=~`éüßñçø€£¥ΩλЖж中文日本語한국어🤖🎉👍🏽\u200b\u00a0"
    strings = rng.sample(lines, 150)
    strings += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(150)]
    strings += ["", " ", "  leading", "trailing  ", "don't we'll they're I'VE", "3.14159 1,000,000 2026-11-22",
                "def f(x):\n    return x ** 2\n", "<|endoftext|>between<|endoftext|>", "\n\n\n", "a" * 300]  # fmt: skip
    return strings


def test_exported_tokenizer_encodes_like_tiktoken(exported, shared_data):
    from transformers import AutoTokenizer

    _, out = exported
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = gpt2_tokenizer()
    for s in varied_strings(shared_data):
        ids = enc.encode(s, allowed_special={"<|endoftext|>"})  # HF reads <|endoftext|> as the special token too
        assert tokenizer.encode(s) == ids, repr(s)
        assert tokenizer.decode(ids) == enc.decode(ids)
    assert tokenizer.eos_token_id == enc.eot_token == 50256


@pytest.fixture(scope="module")
def exported_modern(tmp_path_factory):
    """A --recipe modern model, every weight random, exported: a NanoChatForCausalLM folder."""
    torch.manual_seed(0)
    switches = {k: v for k, v in RECIPES["modern"].items() if k in SWITCHES}
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64, **switches))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("exported_modern")
    export_hf(model, out)
    return model.eval(), out


def test_an_exported_modern_model_has_our_logits_and_greedy_tokens_in_transformers(exported_modern):
    from transformers import AutoModelForCausalLM

    model, out = exported_modern
    hf = AutoModelForCausalLM.from_pretrained(out).double()
    assert type(hf).__name__ == "NanoChatForCausalLM" and hf.config.vocab_size == GPT2_VOCAB_SIZE
    idx = torch.randint(0, GPT2_VOCAB_SIZE, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.double()(idx)[0][..., :GPT2_VOCAB_SIZE], hf(idx).logits
        # NanoChat's RMSNorm computes in float32 whatever the dtype: ours in float32 is the measure of that rounding
        float32_rounding = (model.float()(idx)[0][..., :GPT2_VOCAB_SIZE].double() - ours).abs().max().item()
        assert 0 < (theirs - ours).abs().max() <= 2 * float32_rounding < 1e-3
        prompt = idx[:, :8]  # greedy to the end, as ours: no stop at <|endoftext|>
        greedy = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False, eos_token_id=None
        )
        assert torch.equal(model.double().generate(prompt, 24, top_k=1), greedy)


def test_an_exported_modern_model_reads_back_as_it_was(exported_modern):
    model, out = exported_modern
    back = GPT.from_pretrained(str(out))
    assert dataclasses.asdict(back.config) == {**dataclasses.asdict(model.config), "vocab_size": GPT2_VOCAB_SIZE}
    for name, weight in back.state_dict().items():  # the rows of the 50,257 real tokens, bitwise
        assert torch.equal(weight, model.float().state_dict()[name][: weight.size(0)]), name
