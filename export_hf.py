"""
Write a train_gpt2.py checkpoint as a Hugging Face folder: weights, config and tokenizer files.

    python export_hf.py log gpt2-ours                    # the newest checkpoint in log/ -> gpt2-ours/
    python export_hf.py log/model_19073.pt gpt2-ours

A GPT-2 recipe model becomes a GPT2LMHeadModel; a --recipe modern one a NanoChatForCausalLM (transformers 5), which
holds that family: RMSNorm without gain (after the embedding too), rotary positions, normalized queries and keys,
ReLU², no biases, an untied head, soft-capped logits. The folder loads with AutoModelForCausalLM.from_pretrained and
AutoTokenizer.from_pretrained, offline, and computes our logits: lm-evaluation-harness, the Hub and serving tools take
it as it is. The padded vocabulary rows are dropped (it has 50,257), and vocab.json / merges.txt are rebuilt from
tiktoken's GPT-2 ranks (they equal OpenAI's files). GPT.from_pretrained reads such a folder back.
"""

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import torch

from checkpoint import NANOCHAT_SWITCHES, flip_rotation, nanochat_names
from cli import ArgumentParser, InputError
from tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer
from train_gpt2 import GPT, HF_TRANSPOSED

# the switches each transformers class holds at these values (the others: any)
GPT2_SWITCHES = dict(rope=False, qk_norm=False, relu2=False, rmsnorm=False, bias=True, tied_head=True)
GPT2_SWITCHES |= dict(logit_softcap=0.0, embed_norm=False)


def hf_config(config, vocab_size=None, **kwargs):
    """transformers' GPT2Config with our dims and no dropout: we train without it, so an exported model computes
    the same function (and tools/bench.py's Hugging Face baseline does the same work)."""
    from transformers import GPT2Config  # slow to import (seconds): only once the inputs are known to be good

    return GPT2Config(
        vocab_size=vocab_size or config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **kwargs,
    )


def gpt2_tokenizer_files(enc):
    """GPT-2's vocab.json and merges.txt (name -> text), rebuilt from tiktoken's ranks, so that Hugging Face
    tokenizers load the same BPE offline."""
    ranks = enc._mergeable_ranks  # token bytes -> id; tiktoken's gpt2 ids are OpenAI's encoder.json ids
    # GPT-2 spells bytes as printable characters: printable ones stand for themselves, the rest shift past 255
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    byte_char = {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}

    def spell(token):
        return "".join(byte_char[b] for b in token)

    def split_in_two(token):
        # replay BPE on the token's bytes with the merges learned before it: it ends in the pair merged last
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, math.inf), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
            _, i = min(pairs)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    merges = [" ".join(spell(p) for p in split_in_two(token)) for token, rank in by_rank if rank >= 256]
    vocab = {spell(token): rank for token, rank in by_rank} | {"<|endoftext|>": enc.eot_token}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }


def export_hf(model, out_dir):
    """Write our GPT into out_dir (new, or an empty folder) as a Hugging Face GPT-2 or NanoChat: the inverse of
    GPT.from_pretrained. It is written beside out_dir and renamed, so an interrupted export leaves nothing."""
    convert = hf_class(model.config)  # before anything is written: a model neither class holds is refused
    out_dir = Path(out_dir).resolve()  # "." has no name to put the temporary folder beside
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} already exists and is not empty: choose a new folder for the export")
    files = gpt2_tokenizer_files(gpt2_tokenizer())  # before anything is written: offline, the tokenizer may be missing
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an export that was interrupted
    try:
        tmp.mkdir(parents=True)  # before the work: a folder that cannot be made is refused first
        convert(model).save_pretrained(tmp)
        for name, text in files.items():
            (tmp / name).write_text(text)
        os.replace(tmp, out_dir)  # over an empty folder too
    except OSError as e:  # no permission, a read-only path such as /proc, or a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{out_dir} cannot be written ({e.strerror or e}): choose a folder you can write to")


def hf_model(model):
    """transformers' GPT2LMHeadModel holding our weights, without the padded vocabulary rows."""
    from transformers import GPT2LMHeadModel  # slow to import (seconds): only once the inputs are known to be good

    n_vocab = min(model.config.vocab_size, GPT2_VOCAB_SIZE)
    hf = GPT2LMHeadModel(hf_config(model.config, vocab_size=n_vocab))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for layer in [k.removesuffix("c_q.weight") for k in state if k.endswith("c_q.weight")]:  # split_qkv: fused
        for kind in ("weight", "bias"):
            state[f"{layer}c_attn.{kind}"] = torch.cat([state.pop(f"{layer}c_{x}.{kind}") for x in "qkv"])
    state = {k: (v.t() if k.endswith(HF_TRANSPOSED) else v).contiguous() for k, v in state.items()}
    state["transformer.wte.weight"] = state["lm_head.weight"] = state["lm_head.weight"][:n_vocab]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing), (missing, unexpected)
    return hf


def hf_class(config):
    """hf_model or nanochat_model: the one whose transformers class holds this architecture, refused (one line)
    where neither does, or where transformers has no NanoChat."""
    holders = {"GPT2LMHeadModel": GPT2_SWITCHES, "NanoChatForCausalLM": NANOCHAT_SWITCHES}
    needs = {name: {k: v for k, v in switches.items() if getattr(config, k) != v} for name, switches in holders.items()}
    closer = min(needs, key=lambda name: len(needs[name]))
    if needs[closer]:
        raise InputError(
            f"neither transformers' GPT2LMHeadModel nor NanoChatForCausalLM holds this model: the closer,"
            f" {closer}, needs {needs[closer]}; sample.py and hellaswag.py --checkpoint read it as it is"
        )
    if closer == "NanoChatForCausalLM":
        nanochat_classes()  # here, before anything is written
        return nanochat_model
    return hf_model


def nanochat_classes():
    """transformers' (NanoChatConfig, NanoChatForCausalLM), or a one-line refusal where transformers has none."""
    try:
        from transformers import NanoChatConfig, NanoChatForCausalLM
    except ImportError:
        import transformers

        raise InputError(
            f"a --recipe modern model needs transformers' NanoChatForCausalLM, in transformers 5.0 and later; this is"
            f" {transformers.__version__}: pip install -U 'transformers>=5'"
        )
    return NanoChatConfig, NanoChatForCausalLM


def nanochat_model(model):
    """transformers' NanoChatForCausalLM holding our weights, without the padded vocabulary rows."""
    NanoChatConfig, NanoChatForCausalLM = nanochat_classes()
    c, n_vocab, eot = model.config, min(model.config.vocab_size, GPT2_VOCAB_SIZE), gpt2_tokenizer().eot_token
    config = NanoChatConfig(
        vocab_size=n_vocab,
        hidden_size=c.n_embd,
        intermediate_size=4 * c.n_embd,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        max_position_embeddings=c.block_size,
        rms_norm_eps=torch.finfo(torch.float32).eps,  # nn.RMSNorm's default, in float32
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),  # train_gpt2.rotary's base
        final_logit_softcapping=c.logit_softcap or None,
        tie_word_embeddings=c.tied_head,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=None,
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name in [k for k in state if k.endswith("c_attn.weight")]:  # fused q, k, v: three matrices
        for x, weight in zip("qkv", state.pop(name).chunk(3), strict=True):
            state[name.replace("c_attn", f"c_{x}")] = weight
    for name in [k for k in state if k.endswith(("c_q.weight", "c_k.weight"))]:
        state[name] = flip_rotation(state[name], c.n_head)
    state = {theirs: state[ours].contiguous() for ours, theirs in nanochat_names(c).items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name] = state[name][:n_vocab]
    hf = NanoChatForCausalLM(config)
    hf.load_state_dict(state)
    return hf


def main(argv=None):
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "checkpoint", help="a train_gpt2.py checkpoint (model_*.pt), or a log dir: its newest checkpoint"
    )
    parser.add_argument("out_dir", help="the folder to write (new, or empty)")
    args = parser.parse_args(argv)
    try:
        export_hf(GPT.from_checkpoint(args.checkpoint), args.out_dir)
    except InputError as e:
        raise SystemExit(str(e))
    print(
        f"wrote {args.out_dir}: load it with transformers' AutoModelForCausalLM.from_pretrained and"
        " AutoTokenizer.from_pretrained"
    )


if __name__ == "__main__":
    main()
