"""D3SR's adversarial losses (paper eq. 2-3), non-saturating, on logits, in NumPy.

    L_G = mean(softplus(-D(F(z_hat, t))))
    L_D = mean(softplus(D(F(z_hat, t)))) + mean(softplus(-D(F(z_H, t))))

Means run over every patch logit of every sample, as the paper's per-patch
discriminator is trained. Computed in float64 with a stable softplus.
"""
from __future__ import annotations

import numpy as np


def _logits(x, name: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def softplus(x) -> np.ndarray:
    """log(1 + exp(x)), without overflow."""
    return np.logaddexp(0.0, np.asarray(x, dtype=np.float64))


def generator_loss(fake_logits) -> float:
    """The generator's loss: mean softplus(-D(fake))."""
    return float(softplus(-_logits(fake_logits, "fake_logits")).mean())


def discriminator_loss(real_logits, fake_logits) -> float:
    """The discriminator's loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
    real, fake = _logits(real_logits, "real_logits"), _logits(fake_logits, "fake_logits")
    return float(softplus(-real).mean() + softplus(fake).mean())


def probabilities(logits) -> np.ndarray:
    """Per-patch probability of being real: sigmoid(logits), same shape, float32."""
    x = _logits(logits, "logits")
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)
