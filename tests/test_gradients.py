"""The training step's numbers: our gradients against transformers' GPT-2, and the compiled bf16 path
(the one bench.py times) against the eager float32 one."""

import pytest
import torch

from train_gpt2 import GPT, GPTConfig

CONFIG = GPTConfig(block_size=64, vocab_size=1000, n_layer=2, n_head=4, n_embd=64)


def gradients(model, idx, targets, autocast=False, compile=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, loss = (torch.compile(model) if compile else model)(idx, targets)
    loss.backward()
    assert not logits.requires_grad  # the logits are for looking at: only the loss is backpropagated
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradients_equal_transformers_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    hf = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in hf.parameters():  # biases and LayerNorms too, so every gradient is a real check
            p.normal_(0.0, 0.1)
    ours = GPT(CONFIG)
    # our Linear weights are (out, in); HF's Conv1D stores them transposed
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, p in ours.named_parameters():
            source = hf.state_dict()[name]
            p.copy_(source.t() if name.endswith(transposed) else source)

    idx = torch.randint(0, 1000, (4, 64))
    loss, grads = gradients(ours, idx[:, :-1], idx[:, 1:])
    hf.zero_grad()
    ref = hf(idx, labels=idx)  # HF shifts the labels itself
    ref.loss.backward()
    torch.testing.assert_close(loss, ref.loss.detach(), atol=1e-5, rtol=0)
    hf_grads = dict(hf.named_parameters())
    for name, grad in grads.items():
        expected = hf_grads[name].grad
        torch.testing.assert_close(
            grad, expected.t() if name.endswith(transposed) else expected, atol=1e-5, rtol=1e-4, msg=name
        )


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16"])
def test_compiled_step_equals_eager(autocast):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    idx = torch.randint(0, 1000, (4, 65))
    x, y = idx[:, :-1], idx[:, 1:]
    loss, grads = gradients(model, x, y, autocast)
    compiled_loss, compiled_grads = gradients(model, x, y, autocast, compile=True)
    # float32: the same math in another order; bfloat16: within its rounding (8 bits of mantissa)
    atol, rtol = (1e-5, 1e-4) if not autocast else (2e-3, 5e-2)
    torch.testing.assert_close(compiled_loss, loss, atol=atol, rtol=rtol)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=atol, rtol=rtol, msg=name)
