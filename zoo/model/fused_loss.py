"""The fused vocabulary projection + cross-entropy of zoo's LM heads, as torch custom ops.

`linear_cross_entropy(hidden, weight, bias, target)` is `F.cross_entropy(F.linear(hidden, weight, bias),
target)` (float tolerance) computed chunk by chunk, so the (rows x vocabulary) logits never exist whole,
with its gradients computed in the forward pass: the bias rides in the matrix product, the softmax is left
unnormalised, and the 1/sum and one-hot terms are applied to the small (rows x hidden) operands instead of
the logits. Those passes over the logits dominate a small LM's step.

The work runs inside `torch.library.custom_op`s with a registered autograd formula and fake (shape-only)
implementations, so `torch.compile` treats the loss as one opaque call and compiles the model around it
(an `autograd.Function` computing gradients in its forward could not be traced: dynamo rejects the
intermediate gradient tensors that alias its outputs).

Precision: the softmax, the loss sum and the gradient accumulation are float32 (float64 for the loss
total). Under autocast (`_low_precision_grads`) the matrix products take operands in the autocast dtype
(bf16 / fp16, as `F.linear` would), accumulate in float32 inside the product and give float32 logits (on CUDA
directly, elsewhere through a cast of each chunk); d loss / d logits is rounded to the autocast dtype once,
as autocast's own backward rounds it. tests/test_gpu_path.py holds it to the error of autocast's own loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

# Logits are computed in chunks of rows whose buffer holds at most this many floats (256 MiB), so the
# memory of the loss is bounded whatever the batch (a GPT-2 eval batch of 128 x 1024 tokens would need
# 26 GB of logits at once); BERT's masked positions of a 64 x 128 batch fit in one chunk.
CHUNK_ELEMENTS = 2**26


class _Workspace:
    """One reusable float32 buffer for the logits chunk of the fused loss.

    A fresh 100+ MB tensor is a fresh mmap whose pages the kernel faults in and zeroes on every step,
    which on CPU costs about as much as the softmax itself. The flat buffer is lent by `take` (with a
    (rows, cols) view of it) and handed back by `give`; a caller that finds it lent (nested use) allocates
    its own. The flat tensor is handed back itself, not found again through a view's `_base`: under
    torch.compile's runtime wrappers a view's `_base` can be an intermediate view.
    """

    def __init__(self) -> None:
        self.free: torch.Tensor | None = None

    def take(self, rows: int, cols: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        buffer, self.free = self.free, None
        if buffer is None or buffer.numel() < rows * cols or buffer.device != like.device:
            buffer = torch.empty(min(int(rows * 1.25), max(rows, CHUNK_ELEMENTS // cols)) * cols,
                                 dtype=torch.float32, device=like.device)
        return buffer, buffer[: rows * cols].view(rows, cols)

    def give(self, buffer: torch.Tensor) -> None:
        self.free = buffer


_WORKSPACE = _Workspace()


@functools.cache
def _cuda_out_dtype_mm(dtype: torch.dtype) -> bool:
    """Whether this torch's CUDA `mm` takes `dtype` operands with a float32 `out_dtype` (torch >= 2.8), both
    returning and into a given `out`; where it does not, `mm32` rounds the product to `dtype` first."""
    try:
        a = torch.ones(2, 2, dtype=dtype, device="cuda")
        out = torch.empty(2, 2, device="cuda")
        return bool(torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
                    and torch.mm(a, a, out_dtype=torch.float32, out=out).eq(2).all())
    except (RuntimeError, TypeError):
        return False


def mm32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`a @ b` as float32 (into `out` when given). Operands of a low-precision dtype are multiplied in that
    dtype, accumulating in float32 inside the product (cuBLAS, oneDNN); the product comes out in float32 on
    CUDA, elsewhere rounded to the operands' dtype first, as `F.linear` under autocast gives it."""
    if a.dtype == torch.float32:
        return torch.mm(a, b, out=out)
    if a.is_cuda and _cuda_out_dtype_mm(a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    product = torch.mm(a, b).float()
    return product if out is None else out.copy_(product)


def _with_bias_column(hidden: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The bias as an extra input column of ones and weight column: the matrix product adds it for free."""
    if bias is None:
        return hidden, weight
    return (torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1),
            torch.cat([weight, bias.to(weight.dtype)[:, None]], dim=1))


def _chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                           on_chunk: Callable[[slice, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Summed cross-entropy (float64) of `hidden @ weight.T` rows; `on_chunk(rows, exp, sums)` sees each chunk's
    unnormalised float32 softmax exp(logits - max) and its row sums before the buffer is reused."""
    vocab = weight.shape[0]
    step = max(1, CHUNK_ELEMENTS // vocab)
    flat, buffer = _WORKSPACE.take(min(step, hidden.shape[0]), vocab, hidden)
    total = hidden.new_zeros((), dtype=torch.float64)
    for start in range(0, hidden.shape[0], step):
        rows = slice(start, start + step)
        exp = mm32(hidden[rows], weight.t(), out=buffer[: len(target[rows])])
        target_logit = exp.gather(1, target[rows, None]).squeeze(1)
        shift = exp.amax(dim=1, keepdim=True)
        sums = exp.sub_(shift).exp_().sum(dim=1)
        total += (sums.log() + shift.squeeze(1) - target_logit).sum()
        if on_chunk is not None:
            on_chunk(rows, exp, sums)
    _WORKSPACE.give(flat)
    return total


def _operands(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, weight) with the bias column in float32, and the same in the dtype the products take."""
    hidden_f, weight_f = _with_bias_column(hidden.float(), weight.float(), bias)
    if compute == torch.float32:
        return hidden_f, weight_f, hidden_f, weight_f
    return hidden_f, weight_f, hidden_f.to(compute), weight_f.to(compute)


def _loss_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.promote_types(hidden.dtype, torch.float32)


@torch.library.custom_op("zoo::linear_cross_entropy_loss", mutates_args=())
def _loss_only(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
               compute: torch.dtype) -> torch.Tensor:
    """Mean cross-entropy, no gradient work (evaluation)."""
    with torch.autocast(hidden.device.type, enabled=False):
        _, _, hidden1, weight1 = _operands(hidden, weight, bias, compute)
        return (_chunked_cross_entropy(hidden1, weight1, target) / hidden.shape[0]).to(_loss_dtype(hidden))


@_loss_only.register_fake
def _(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
      compute: torch.dtype) -> torch.Tensor:
    return hidden.new_empty((), dtype=_loss_dtype(hidden))


def _float32_grads(hidden_f: torch.Tensor, weight_f: torch.Tensor, target: torch.Tensor,
                   width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, d loss_sum / d hidden, d loss_sum / d weight1 transposed) in float32, the CPU's fast path.

    The softmax stays unnormalised in the reused buffer; the 1/sum and one-hot terms go to the small operands.
    """
    grad_hidden = hidden_f.new_empty(hidden_f.shape[0], width)
    grad_weight_t = hidden_f.new_zeros(hidden_f.shape[1], weight_f.shape[0])  # (width [+ bias], vocab)

    def accumulate(rows: slice, exp: torch.Tensor, sums: torch.Tensor) -> None:
        # d loss_sum / d logits = exp / sums - onehot(target), never formed: folded into the products
        torch.mm(exp, weight_f[:, :width], out=grad_hidden[rows])
        grad_hidden[rows].div_(sums[:, None])
        grad_weight_t.addmm_((hidden_f[rows] / sums[:, None]).t(), exp)

    loss = _chunked_cross_entropy(hidden_f, weight_f, target, accumulate)
    grad_hidden.sub_(weight_f[target, :width])
    grad_weight_t.t().index_add_(0, target, hidden_f, alpha=-1.0)
    return loss, grad_hidden, grad_weight_t


# Under autocast a token's loss is -log p(target) from the float32 softmax; p is kept above the smallest
# normal float, so a token the model gives less than e^-87 (a diverged model) counts 87 nats, not inf.
_TINY = torch.finfo(torch.float32).tiny


def _low_precision_grads(hidden_c: torch.Tensor, weight_c: torch.Tensor, target: torch.Tensor,
                         width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_float32_grads` for products in a low-precision dtype (autocast, GPUs): per chunk the logits come out
    of the product in float32 (`mm32`), one fused softmax turns them into probabilities, the one-hot is
    subtracted in float32, and d loss / d logits is rounded to the products' dtype once, as autocast's
    `F.linear` backward rounds its gradient; the gradients accumulate in float32 across chunks."""
    grad_hidden = hidden_c.new_empty(hidden_c.shape[0], width, dtype=torch.float32)
    grad_weight_t = hidden_c.new_zeros(hidden_c.shape[1], weight_c.shape[0], dtype=torch.float32)
    total = hidden_c.new_zeros((), dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // weight_c.shape[0])
    for start in range(0, hidden_c.shape[0], step):
        rows, chosen = slice(start, start + step), target[start:start + step, None]
        probs = torch.softmax(mm32(hidden_c[rows], weight_c.t()), dim=1)
        total -= probs.gather(1, chosen).clamp_min_(_TINY).log_().sum()
        grad_logits = probs.scatter_add_(1, chosen, probs.new_full(chosen.shape, -1.0)).to(hidden_c.dtype)
        del probs
        mm32(grad_logits, weight_c[:, :width], out=grad_hidden[rows])
        grad_weight_t.add_(mm32(hidden_c[rows].t(), grad_logits))
    return total, grad_hidden, grad_weight_t


@torch.library.custom_op("zoo::linear_cross_entropy_with_grads", mutates_args=())
def _loss_and_grads(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                    compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, d loss_sum / d hidden, d loss_sum / d [weight | bias] transposed: (width [+ 1], vocab)),
    the gradients float32."""
    with torch.autocast(hidden.device.type, enabled=False):
        width = hidden.shape[1]
        hidden_f, weight_f, hidden1, weight1 = _operands(hidden, weight, bias, compute)
        if compute == torch.float32:
            loss, grad_hidden, grad_weight_t = _float32_grads(hidden_f, weight_f, target, width)
        else:
            loss, grad_hidden, grad_weight_t = _low_precision_grads(hidden1, weight1, target, width)
        return (loss / hidden.shape[0]).to(_loss_dtype(hidden)), grad_hidden, grad_weight_t


@_loss_and_grads.register_fake
def _(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
      compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = hidden.shape[1] + (bias is not None)
    return (hidden.new_empty((), dtype=_loss_dtype(hidden)), hidden.new_empty(hidden.shape, dtype=torch.float32),
            hidden.new_empty((width, weight.shape[0]), dtype=torch.float32))


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    hidden, weight, bias = inputs[:3]
    _, grad_hidden, grad_weight_t = output
    ctx.save_for_backward(grad_hidden, grad_weight_t)
    ctx.mark_non_differentiable(grad_hidden, grad_weight_t)
    ctx.has_bias, ctx.width, ctx.rows = bias is not None, hidden.shape[1], hidden.shape[0]
    ctx.dtypes = hidden.dtype, weight.dtype, bias.dtype if bias is not None else None


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, *unused: torch.Tensor
              ) -> tuple[torch.Tensor | None, ...]:
    grad_hidden, grad_weight_t = ctx.saved_tensors
    hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
    scale = grad_loss / ctx.rows
    weight_part = grad_weight_t.t()[:, : ctx.width]
    grad_bias = (grad_weight_t[ctx.width] * scale).to(bias_dtype) if ctx.has_bias else None
    grad_weight = torch.mul(weight_part, scale, out=weight_part.new_empty(weight_part.shape))  # contiguous
    return (grad_hidden * scale).to(hidden_dtype), grad_weight.to(weight_dtype), grad_bias, None, None


_loss_and_grads.register_autograd(_backward, setup_context=_setup_context)


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of the loss's matrix products: autocast's when it is on for the weight's device."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias), target)`, fused; the gradient work is skipped when no
    gradient is wanted."""
    compute = compute_dtype(weight)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if wants_grad:
        return _loss_and_grads(hidden, weight, bias, target, compute)[0]
    return _loss_only(hidden, weight, bias, target, compute)
