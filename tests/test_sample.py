"""GPT.generate against transformers and a full recompute, seeded sampling, and the sample.py CLI end to end."""

import dataclasses

import pytest
import tiktoken
import torch

from tokenizer import GPT2_VOCAB_SIZE
from train_gpt2 import GPT, PADDED_VOCAB_SIZE, GPTConfig

pytestmark = pytest.mark.xdist_group("sample")  # one worker: its module fixtures are computed once

PROMPT = "Hello, I'm a language model,"


def spread_weights(model):
    """Weights much wider than the 0.02 init: greedy decoding then wanders instead of repeating one token."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = "ln_" in name and name.endswith(".weight")  # LayerNorm gains stay near 1
            p.normal_(1.0 if gain else 0.0, 0.1 if gain else 0.3)


def favour(model, ids, logit):
    """Add `logit` to the logits of `ids` at every position: the final LayerNorm's feature 0 becomes a
    constant 1 that only their lm_head rows read (the real rows get 0 there, so they keep their scores)."""
    with torch.no_grad():
        model.transformer.ln_f.weight[0], model.transformer.ln_f.bias[0] = 0.0, 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[ids, 0] = logit


def random_gpt(block_size=32, **switches):
    """A GPT with the padded vocabulary and wide random weights. Of GPT-2's architecture, its padded ids outscore every
    real token, so only masking keeps them out (favour needs ln_f's bias, which the modern switches drop)."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=block_size, vocab_size=PADDED_VOCAB_SIZE, n_layer=2, n_head=4, n_embd=64, **switches)
    model = GPT(config).eval()
    spread_weights(model)
    if not switches:
        favour(model, slice(GPT2_VOCAB_SIZE, None), 1e4)
    return model


def prompts(batch, length):
    return torch.randint(0, GPT2_VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(1))


# --- generate ----------------------------------------------------------------------


def test_greedy_equals_transformers_generate(random_hf_gpt2, tmp_path):
    hf = random_hf_gpt2(n_positions=64, n_embd=64, n_layer=2, n_head=4)
    spread_weights(hf)
    hf.save_pretrained(tmp_path)
    idx = prompts(2, 8)
    # eos_token_id=None: HF would stop a row at <|endoftext|> (and min_new_tokens would forbid it, changing the argmax)
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=40, eos_token_id=None)
    ours = GPT.from_pretrained(str(tmp_path)).generate(idx, 40, top_k=1)
    assert torch.equal(ours, ref)
    assert all(len(set(row)) > 10 for row in ours[:, 8:].tolist())  # not a degenerate repetition


def test_greedy_with_cache_equals_full_recompute_past_the_context():
    model = random_gpt(block_size=32)
    idx = prompts(2, 10)
    ref = idx
    for _ in range(32 + 20):  # the window starts sliding 22 tokens in
        logits, _ = model(ref[:, -32:])
        ref = torch.cat((ref, logits[:, -1, :GPT2_VOCAB_SIZE].argmax(-1, keepdim=True)), dim=1)
    assert (logits[:, -1].argmax(-1) >= GPT2_VOCAB_SIZE).all()  # unmasked, the padding would win
    assert torch.equal(model.generate(idx, 32 + 20, top_k=1), ref)
    assert all(len(set(row)) > 20 for row in ref[:, 10:].tolist())


def test_same_seed_same_samples_other_seed_other_samples():
    model = random_gpt()
    idx = prompts(3, 4)
    a, b, c = (model.generate(idx, 20, temperature=2.0, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_padded_ids_are_never_sampled():
    model = random_gpt()
    for top_k in (None, 100):
        out = model.generate(
            prompts(2, 4), 24, temperature=10.0, top_k=top_k, generator=torch.Generator().manual_seed(0)
        )
        assert out.max() < GPT2_VOCAB_SIZE


def test_top_k_samples_only_among_the_k_most_likely():
    model = random_gpt()
    idx = prompts(4, 8)

    def ranks(top_k):
        """The rank of every sampled token among the model's scores at its position (0 = the most likely)."""
        out = model.generate(idx, 24, temperature=10.0, top_k=top_k, generator=torch.Generator().manual_seed(0))
        logits = model(out)[0][:, 7:-1, :GPT2_VOCAB_SIZE]  # one forward over all 32 tokens: within the context
        sampled = logits.gather(-1, out[:, 8:, None])
        return (logits > sampled).sum(-1)

    assert ranks(top_k=5).max() < 5
    assert ranks(top_k=None).max() >= 5  # at this temperature the check above would catch a missing cut


# --- sample.py end to end ----------------------------------------------------------


@pytest.fixture(scope="module")
def sample(run):
    """sample.py with these flags, in float32 on the CPU so the runs match the in-process reference; offline, so
    a hub name fails at once."""
    return lambda *args, cwd=None, env=None: run(
        "sample.py",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        *args,
        cwd=cwd,
        env={"HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def log_dir(train, tiny, shakespeare_shards, tmp_path_factory):
    """A folder named log holding model_00010.pt from a 10-step run of the micro model on Tiny Shakespeare."""
    log_dir = tmp_path_factory.mktemp("run") / "log"
    proc = train(*tiny, "--max_steps", "10", "--data_dir", str(shakespeare_shards), "--log_dir", str(log_dir))
    assert proc.returncode == 0, proc.stderr
    return log_dir


def test_sample_prints_the_prompt_and_its_seeded_continuation(sample, sample_stdout_of, log_dir):
    args = ["--prompt", PROMPT, "--max_new_tokens", 30]
    default = sample(*args, "--seed", 5, cwd=log_dir.parent)  # no --checkpoint: the newest in ./log
    named = sample(*args, "--seed", 5, "--checkpoint", log_dir / "model_00010.pt")
    other = sample(*args, "--seed", 6, "--checkpoint", log_dir)
    assert default.returncode == named.returncode == other.returncode == 0, default.stderr + named.stderr + other.stderr
    expected, _ = sample_stdout_of(GPT.from_checkpoint(log_dir), PROMPT, seed=5, max_new_tokens=30)
    assert default.stdout == named.stdout == expected
    assert other.stdout.startswith(PROMPT) and other.stdout != expected
    assert len(expected) > len(PROMPT) + 30  # 30 tokens of continuation, not an empty one


def is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_streamed_text_joins_tokens_that_split_a_character(sample, sample_stdout_of, log_dir, tmp_path):
    # a model that samples only tokens holding part of a UTF-8 character (e.g. the lone byte 0xc3):
    # its text is right only if the pieces are joined before they are decoded
    enc = tiktoken.get_encoding("gpt2")
    pieces = [i for i in range(GPT2_VOCAB_SIZE) if not is_utf8(enc.decode_single_token_bytes(i))]
    model = GPT.from_checkpoint(log_dir)
    favour(model, pieces, 50.0)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, tmp_path / "model_00001.pt")

    proc = sample("--checkpoint", tmp_path, "--prompt", "Café", "--seed", 3, "--max_new_tokens", 40)
    assert proc.returncode == 0, proc.stderr
    expected, new = sample_stdout_of(model, "Café", seed=3, max_new_tokens=40)
    assert proc.stdout == expected
    assert set(new) <= set(pieces) and enc.decode(new) != "".join(enc.decode([t]) for t in new)


def test_several_samples_print_one_after_another_labelled(sample, log_dir):
    proc = sample("--checkpoint", log_dir, "--num_samples", 2, "--max_new_tokens", 20)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split("--- sample 2 of 2 ---\n")
    assert first.startswith("--- sample 1 of 2 ---\n" + PROMPT) and second.startswith(PROMPT)
    assert first.removeprefix("--- sample 1 of 2 ---\n") != second


def test_empty_and_overlong_prompts(sample, log_dir):
    empty = sample("--checkpoint", log_dir, "--prompt", "", "--max_new_tokens", 10)
    assert empty.returncode == 0 and empty.stdout.strip() and not empty.stdout.startswith("<|endoftext|>"), empty.stderr

    enc = tiktoken.get_encoding("gpt2")
    long = " ".join(f"word{i}" for i in range(200))  # micro's context is 128 tokens
    proc = sample("--checkpoint", log_dir, "--prompt", long, "--max_new_tokens", 5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "keeping its last 128" in proc.stderr
    assert proc.stdout.startswith(enc.decode(enc.encode(long)[-128:])) and not proc.stdout.startswith("word0 ")


def test_init_from_a_local_hugging_face_folder(sample, sample_stdout_of, random_hf_gpt2, tmp_path):
    random_hf_gpt2(n_positions=64, n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path)
    proc = sample("--init_from", tmp_path, "--prompt", PROMPT, "--seed", 2, "--max_new_tokens", 12)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == sample_stdout_of(GPT.from_pretrained(str(tmp_path)), PROMPT, seed=2, max_new_tokens=12)[0]


def test_help_lists_every_flag_with_its_default(sample):
    proc = sample("--help")
    flags = [
        "--checkpoint",
        "--init_from",
        "--prompt",
        "--num_samples",
        "--max_new_tokens",
        "--temperature",
        "--top_k",
        "--seed",
        "--device",
        "--dtype",
        "--compile",
    ]
    assert proc.returncode == 0 and all(f in proc.stdout for f in flags)
    assert proc.stdout.count("(default:") == len(flags)
