"""y = x Wᵀ for a compressed W, as a custom autograd function with an always-sparse backward."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

BackwardObserver = Callable[[torch.Tensor, torch.Tensor], None]
TransposedCSR = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Transposed = Union[TransposedCSR, Callable[[], TransposedCSR]]


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, crow, col, transposed, n_in, observer, slots, walk):  # type: ignore[override]
        from . import feature_major, spmm  # late import: the dispatcher imports this module

        x_fm = feature_major(x)  # free when x is itself a transposed feature-major view
        ctx.save_for_backward(x_fm, values)
        ctx.index = (crow, col, transposed, slots, walk)
        ctx.n_in = n_in
        ctx.observer = observer
        # A leaf input's gradient is stored in the input's own layout (autograd copies it otherwise):
        # give a batch-major leaf a batch-major gradient; anything else gets the free feature-major view.
        ctx.batch_major_grad = x.is_leaf and x.is_contiguous() and not x.t().is_contiguous()
        return spmm(crow, col, values, x_fm, n_in, slots, walk).t()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        from . import feature_major, linear_grads, spmm_transposed

        x_fm, values = ctx.saved_tensors
        crow, col, transposed, slots, walk = ctx.index
        gy_fm = feature_major(grad_out)
        grad_x = grad_x_fm = grad_values = None
        if ctx.needs_input_grad[1]:  # with the input's gradient: one walk for both where a backend fuses them
            grad_x_fm, grad_values = linear_grads(crow, col, values, gy_fm, x_fm, transposed, slots, walk,
                                                  input_grad=ctx.needs_input_grad[0])
        elif ctx.needs_input_grad[0]:
            grad_x_fm = spmm_transposed(crow, col, values, gy_fm, ctx.n_in, transposed)
        if grad_x_fm is not None:
            grad_x = feature_major(grad_x_fm) if ctx.batch_major_grad else grad_x_fm.t()
        if ctx.observer is not None:
            ctx.observer(x_fm, gy_fm)
        return grad_x, grad_values, None, None, None, None, None, None, None


def sparse_linear(x: torch.Tensor, values: torch.Tensor, crow: torch.Tensor, col: torch.Tensor,
                  transposed: Transposed, n_in: int, observer: Optional[BackwardObserver] = None,
                  slots: Optional[torch.Tensor] = None,
                  walk: Optional[tuple[torch.Tensor, int]] = None) -> torch.Tensor:
    """x: (R, n_in) -> (R, n_out), W given by the CSR (crow, col, values).

    ``transposed`` is W's transposed CSR (ccol, row_t, perm_t) — ``perm_t[j]`` the value slot of its j-th
    entry — or a zero-argument callable returning it, so a layout builds it only when an input gradient is
    needed. ``slots``: the values are in row-block storage order, CSR entry p's value is ``values[slots[p]]``
    (``perm_t`` then holds storage positions too, and the value gradient comes back in storage order);
    ``walk``: the layout's ``storage_walk()``, for forward and backward in storage order where our CPU
    kernels serve.
    ``observer(x_fm, gy_fm)``, if given, is called in backward with the feature-major input (n_in, R) and
    output gradient (n_out, R): the hook dynamic-sparse methods use to score growth candidates without an
    extra pass.
    """
    return _SparseLinear.apply(x, values, crow, col, transposed, n_in, observer, slots, walk)
