"""JAX's locally connected layer as a peer of bench_lc2d.py: ``jax.lax.conv_general_dilated_local`` under XLA
(jit), its full training step (forward, then the vector-Jacobian product for x, weight and bias with the same
grad_y), on the same values as our case.

Layout map (dimension_numbers NCHW / OIHW / NCHW): JAX's unshared kernel is [C_out, K, H_out, W_out] with
K = C_in * kH * kW fused in the order (c, r, s), exactly our patch index k = (c * kH + r) * kW + s, so
ours [H_out, W_out, C_out, C_in, kH, kW] -> reshape [H_out, W_out, C_out, K] -> transpose (2, 3, 0, 1).
Padding is ours, explicit ((top, bottom), (left, right)); the bias is added as [1, C_out, H_out, W_out].
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch


def backend(device: str) -> Optional[str]:
    """The JAX platform that runs on `device` ("cpu" or "cuda"), or None where jax (or a GPU backend of it)
    cannot be imported."""
    try:
        import jax
    except ImportError:
        return None
    platform = "cpu" if device == "cpu" else "gpu"
    try:
        return platform if jax.devices(platform) else None
    except RuntimeError:  # no backend of that platform in this jaxlib
        return None


def _to_jax(t: torch.Tensor, device):
    import jax
    return jax.device_put(np.ascontiguousarray(t.detach().float().cpu().numpy()), device)


def make_step(case, platform: str) -> Callable[[], tuple]:
    """A callable running one jitted full step of the case's layer in JAX and waiting for it; returns
    (y, dx, dW, db) as JAX arrays, dW in JAX's layout."""
    import jax
    from jax import lax

    device = jax.devices(platform)[0]
    s = case.shape
    H_out, W_out = case.out
    K = s.c_in * s.k * s.k
    w = case.w.detach().reshape(H_out, W_out, s.c_out, K).permute(2, 3, 0, 1)
    x, w, b, gy = (_to_jax(t, device) for t in (case.x, w, case.b, case.gy))
    p = case.pad4
    padding = ((p[0], p[1]), (p[2], p[3]))

    def forward(x, w, b):
        y = lax.conv_general_dilated_local(x, w, window_strides=tuple(case.stride), padding=padding,
                                           filter_shape=(s.k, s.k), rhs_dilation=tuple(case.dil),
                                           dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None]

    @jax.jit
    def step(x, w, b, gy):
        y, vjp = jax.vjp(forward, x, w, b)
        return (y,) + vjp(gy)

    return lambda: jax.block_until_ready(step(x, w, b, gy))


def compare(case, jax_out: tuple, ours: tuple) -> Dict[str, float]:
    """Largest |difference| / max |ours| per output, JAX's step against ours (y, dx, dW in our layout, db)."""
    s = case.shape
    H_out, W_out = case.out
    y, dx, dw, db = (np.asarray(v) for v in jax_out)
    dw = dw.transpose(2, 3, 0, 1).reshape(H_out, W_out, s.c_out, s.c_in, s.k, s.k)
    res = {}
    for name, a, e in zip(("y", "dx", "dW", "db"), (y, dx, dw, db), ours):
        e = e.detach().float().cpu().numpy()
        res[name] = float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-30))
    return res
