"""y = x Wᵀ for a compressed W, as a custom autograd function with an always-sparse backward."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

BackwardObserver = Callable[[torch.Tensor, torch.Tensor], None]
TransposedCSR = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Transposed = Union[TransposedCSR, Callable[[], TransposedCSR]]


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, crow, col, transposed, n_in, observer):  # type: ignore[override]
        from . import spmm  # late import: the dispatcher imports this module

        x_fm = x.t().contiguous()  # free when x is itself a transposed feature-major view
        ctx.save_for_backward(x_fm, values)
        ctx.index = (crow, col, transposed)
        ctx.n_in = n_in
        ctx.observer = observer
        return spmm(crow, col, values, x_fm, n_in).t()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        from . import sddmm, spmm_transposed

        x_fm, values = ctx.saved_tensors
        crow, col, transposed = ctx.index
        gy_fm = grad_out.t().contiguous()
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = spmm_transposed(crow, col, values, gy_fm, ctx.n_in, transposed).t()
        if ctx.needs_input_grad[1]:
            grad_values = sddmm(crow, col, gy_fm, x_fm)
        if ctx.observer is not None:
            ctx.observer(x_fm, gy_fm)
        return grad_x, grad_values, None, None, None, None, None


def sparse_linear(x: torch.Tensor, values: torch.Tensor, crow: torch.Tensor, col: torch.Tensor,
                  transposed: Transposed, n_in: int, observer: Optional[BackwardObserver] = None) -> torch.Tensor:
    """x: (R, n_in) -> (R, n_out), W given by the CSR (crow, col, values).

    ``transposed`` is W's transposed CSR (ccol, row_t, perm_t) — ``perm_t[j]`` the value slot of its j-th
    entry — or a zero-argument callable returning it, so a layout can build it only if the backend needs
    it. ``observer(x_fm, gy_fm)``, if given, is called in backward with the feature-major input (n_in, R)
    and output gradient (n_out, R): the hook dynamic-sparse methods use to score growth candidates
    without an extra pass.
    """
    return _SparseLinear.apply(x, values, crow, col, transposed, n_in, observer)
