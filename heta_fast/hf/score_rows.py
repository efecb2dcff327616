"""The query-blocked attention core's elementwise passes over a score block, fused row by row.

In the blocked core (:mod:`heta_fast.hf.attention_core`) a score block is ``[rows, keys]`` per kv head, 16 MiB,
and per direction of a Hessian–vector product several of its tensors are combined elementwise: torch runs
each op as its own pass over the block, which by then is out of cache. Two ops do those passes one row at a
time instead (csrc/cpu/score_rows.cpp), with a row of P read once for every direction:

- ``heta_fast::center_mul_rows_(x, delta, P)``: ``x ← (x − δ) ⊙ P``, the first backward's dS = P ⊙ (dP − δ).
- ``heta_fast::softmax_vjp_rows_(P, dPc, G_dS, G_P)``: the softmax part of the core's second backward,
  ``G_dS ← G_dP`` and ``G_P ← G_S`` (:func:`softmax_vjp_rows_reference` spells it out).

Layout: tensors with directions are ``[O, N, I, k]`` (N directions between an outer and an inner row axis),
P and dP − δ are ``[O, I, k]``, per-row statistics ``[O, N, I]``. The schemas are defined here with the torch
references as their ``CompositeExplicitAutograd`` kernels (every device, every dtype, and the extension-free
install); loading ``heta_fast._C`` adds the CPU kernels for float32 and float64, which take precedence.
``tests/hf/test_score_rows.py`` compares both with float64 references.
"""

from __future__ import annotations

import torch
from torch import Tensor

_lib = torch.library.Library("heta_fast", "FRAGMENT")
_lib.define("center_mul_rows_(Tensor(a!) x, Tensor delta, Tensor P) -> ()")
_lib.define("softmax_vjp_rows_(Tensor P, Tensor dPc, Tensor(a!) G_dS, Tensor(b!) G_P) -> ()")


def center_mul_rows_reference(x: Tensor, delta: Tensor, P: Tensor) -> None:
    """``x ← (x − δ) ⊙ P`` in place: x ``[O, N, I, k]``, delta ``[O, N, I]``, P ``[O, I, k]``."""
    x.sub_(delta.unsqueeze(-1)).mul_(P.unsqueeze(1))


def softmax_vjp_rows_reference(P: Tensor, dPc: Tensor, G_dS: Tensor, G_P: Tensor) -> None:
    """The softmax part of the attention core's second backward, in place (P, dPc ``[O, I, k]``; G_dS, G_P
    ``[O, N, I, k]``). With ``A = G_dS − rowsum(P ⊙ G_dS)``:

    - ``G_dS ← G_dP = P ⊙ A`` (the cotangent of dP, through dS = P ⊙ (dP − δ) and δ = rowsum(P ⊙ dP));
    - ``G_P ← G_S = P ⊙ (G − rowsum(P ⊙ G))`` with ``G = G_P + A ⊙ dPc`` (the cotangent of P, then of the
      scores through the softmax).

    G is the cotangent of P up to a per-row constant (G_δ·δ), which the softmax's derivative cancels since the
    rows of P sum to 1."""
    P, dPc = P.unsqueeze(1), dPc.unsqueeze(1)
    A = G_dS.sub_((P * G_dS).sum(-1, keepdim=True))
    G_P.addcmul_(A, dPc)
    A.mul_(P)
    G_P.sub_((P * G_P).sum(-1, keepdim=True)).mul_(P)


_lib.impl("center_mul_rows_", center_mul_rows_reference, "CompositeExplicitAutograd")
_lib.impl("softmax_vjp_rows_", softmax_vjp_rows_reference, "CompositeExplicitAutograd")

from .. import _ext, backends  # noqa: E402, F401  (_ext: loads the C++ kernels after the schemas)


def _fused(*tensors: Tensor) -> bool:
    """Whether the compiled row kernels take these tensors: the extension is loaded (and ``HETA_FAST_BACKEND``
    does not say ``torch``), the tensors are all float32 or all float64 on the CPU, and none is batched by a vmap
    (a generated rule, or ``autograd.grad(is_grads_batched=True)``'s legacy one, cannot see through an opaque op)."""
    x = tensors[0]
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if any(t.dtype != x.dtype for t in tensors):
        return False
    functorch = torch._C._functorch
    if any(functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t) for t in tensors):
        return False
    return backends.resolve("score_rows", "auto", x.device) == "ext"


def center_mul_rows_(x: Tensor, delta: Tensor, P: Tensor) -> Tensor:
    """``x ← (x − δ) ⊙ P`` (x ``[O, N, I, k]`` contiguous, delta ``[O, N, I]``, P ``[O, I, k]``); returns x."""
    if _fused(x, delta, P) and x.is_contiguous():
        torch.ops.heta_fast.center_mul_rows_(x, delta.contiguous(), P.contiguous())
    else:
        center_mul_rows_reference(x, delta, P)
    return x


def softmax_vjp_rows_(P: Tensor, dPc: Tensor, G_dS: Tensor, G_P: Tensor) -> tuple[Tensor, Tensor]:
    """(G_dP, G_S), written over (G_dS, G_P): :func:`softmax_vjp_rows_reference`, fused where it can be."""
    if _fused(G_dS, G_P, P, dPc) and G_dS.is_contiguous() and G_P.is_contiguous():
        torch.ops.heta_fast.softmax_vjp_rows_(P.contiguous(), dPc.contiguous(), G_dS, G_P)
    else:
        softmax_vjp_rows_reference(P, dPc, G_dS, G_P)
    return G_dS, G_P
