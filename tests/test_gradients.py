"""The training step's numbers: our gradients against transformers' GPT-2, and the compiled path (bf16: the one
tools/bench.py times) against eager, both measured against float64."""

import copy

import pytest
import torch
from torch.nn import functional as F

from train_gpt2 import GPT, GPTConfig

CONFIG = GPTConfig(block_size=64, vocab_size=1000, n_layer=2, n_head=4, n_embd=64)


def gradients(model, idx, targets, autocast=False, compile=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, loss = (torch.compile(model) if compile else model)(idx, targets)
    loss.backward()
    assert not logits.requires_grad  # the logits are for looking at: only the loss is backpropagated
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradients_equal_transformers_gpt2(random_hf_gpt2):
    # every tensor randomized (HF's init leaves biases 0 and LayerNorms 1), so that each gradient is a real check;
    # in float64 both, so that what is left is a slip, not rounding
    hf = random_hf_gpt2(std=0.1, vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4).double()
    ours = GPT(CONFIG).double()
    # our Linear weights are (out, in); HF's Conv1D stores them transposed
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, p in ours.named_parameters():
            source = hf.state_dict()[name]
            p.copy_(source.t() if name.endswith(transposed) else source)

    idx = torch.randint(0, 1000, (4, 64))
    loss, grads = gradients(ours, idx[:, :-1], idx[:, 1:])
    # the next-token loss of HF's logits, taken here: HF's own loss upcasts to float32, which would cap the precision
    logits = hf(idx).logits
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-12, rtol=0)
    hf_grads = dict(hf.named_parameters())
    for name, grad in grads.items():
        expected = hf_grads[name].grad
        torch.testing.assert_close(
            grad, expected.t() if name.endswith(transposed) else expected, atol=1e-12, rtol=1e-9, msg=name
        )


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16"])
def test_compiled_step_is_as_close_to_float64_as_eager(autocast):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    idx = torch.randint(0, 1000, (4, 65))
    x, y = idx[:, :-1], idx[:, 1:]
    exact_loss, exact = gradients(copy.deepcopy(model).double(), x, y)  # the truth the two round away from
    loss, grads = gradients(model, x, y, autocast)
    compiled_loss, compiled_grads = gradients(model, x, y, autocast, compile=True)
    # compiled kernels round in another order, and fuse: against float64 they err as eager does, within 4x for every
    # tensor (a slip in the graph errs by orders more). At least one rounding step of the precision, at each scale
    eps = torch.finfo(torch.bfloat16 if autocast else torch.float32).eps
    for name, truth in {"loss": exact_loss, **exact}.items():
        eager, compiled = (loss, compiled_loss) if name == "loss" else (grads[name], compiled_grads[name])
        errors = [(t.double() - truth).abs().max().item() for t in (eager, compiled)]
        allowed = 4 * max(errors[0], eps * truth.abs().max().item())
        assert errors[1] <= allowed, f"{name}: compiled errs {errors[1]:.2e} from float64, eager {errors[0]:.2e}"
