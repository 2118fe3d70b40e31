"""export_hf.py: the folder loads in transformers and computes our logits; its tokenizer is tiktoken's BPE."""

import random

import pytest
import torch

from export_hf import export_hf
from tokenizer import gpt2_tokenizer
from train_gpt2 import GPT, GPTConfig

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
