"""Probabilistic PCA: a tractable model whose masked conditionals are Gaussian in closed form.

x ~ N(mean, W Wᵀ + σ² I). Every quantity is float64 and differentiable in the
parameters, so the same code scores data exactly and serves as a training objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from maskpolicy.tasks.base import TaskError

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class PPCA:
    """Parameters: ``mean`` ``[D]``, ``loadings`` W ``[D, q]``, ``log_noise`` log σ (scalar tensor)."""

    mean: Tensor
    loadings: Tensor
    log_noise: Tensor

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def covariance(self) -> Tensor:
        noise = torch.exp(2 * self.log_noise) * torch.eye(self.dim, dtype=self.mean.dtype)
        return self.loadings @ self.loadings.T + noise

    def log_likelihood(self, data: Tensor, observed: Tensor | None = None) -> Tensor:
        """Exact ``log p(x_O)`` per row of ``data`` ``[B, D]`` → ``[B]``; ``observed`` ``Bool[B, D]`` is O (all: None).

        The marginal of the observed coordinates is N(μ_O, C_OO). Each row's C_OO is
        embedded in an identity matrix and its unobserved coordinates set to their mean,
        so the padding adds exactly (D − |O|)/2 · log 2π, which is taken back off; rows
        with nothing observed give 0.
        """
        _check_data(data, self.dim)
        if observed is None:
            return torch.distributions.MultivariateNormal(self.mean, self.covariance()).log_prob(data)
        _check_observed(observed, data)
        pair = observed[:, :, None] & observed[:, None, :]
        block = torch.where(pair, self.covariance(), torch.eye(self.dim, dtype=self.mean.dtype))
        centred = torch.where(observed, data - self.mean, 0.0)
        padded = torch.distributions.MultivariateNormal(torch.zeros_like(self.mean), block).log_prob(centred)
        return padded + 0.5 * LOG_2PI * (~observed).sum(1, dtype=padded.dtype)

    def masked_log_probs(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """``log p(x_j | x_{not M})`` at every masked ``j``; ``inputs`` ``[N, D]``, ``masks`` ``Bool[N, D]``.

        Every coordinate outside the mask is conditioned on, whether the estimator scores it or not.

        Conditioning via the precision Λ = C⁻¹: given the observed set O, the masked
        block has precision Λ_MM and mean μ_M − Λ_MM⁻¹ Λ_MO (x_O − μ_O). The masked
        block is embedded in an identity matrix so all masks solve as one batch.
        Unmasked entries of the result are 0.
        """
        _check_data(inputs, self.dim)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(self.covariance()))
        centred = inputs - self.mean
        pair = masks[:, :, None] & masks[:, None, :]
        identity = torch.eye(self.dim, dtype=precision.dtype)
        block = torch.where(pair, precision, identity)
        pull = torch.where(masks, (centred * ~masks) @ precision, 0.0)  # Λ_MO (x_O − μ_O), zero off M
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(block))
        shift = (covariance @ pull[..., None]).squeeze(-1)
        variance = covariance.diagonal(dim1=1, dim2=2)
        residual = centred + shift  # x − conditional mean
        log_probs = -0.5 * (LOG_2PI + variance.log() + residual**2 / variance)
        return torch.where(masks, log_probs, 0.0)

    def detached(self) -> PPCA:
        return PPCA(self.mean.detach(), self.loadings.detach(), self.log_noise.detach())


def _check_data(data: Tensor, dim: int) -> None:
    if data.dim() != 2 or data.shape[1] != dim or not data.dtype.is_floating_point:
        raise TaskError(f"PPCA data must be a float tensor [batch, {dim}], got {data.dtype} {list(data.shape)}")


def _check_observed(observed: Tensor, data: Tensor) -> None:
    if not isinstance(observed, Tensor) or observed.dtype != torch.bool or observed.shape != data.shape:
        found = f"{observed.dtype} {list(observed.shape)}" if isinstance(observed, Tensor) else type(observed).__name__
        raise TaskError(f"observed must be Bool{list(data.shape)} like the data (None: every coordinate), got {found}")


def maximum_likelihood(data: Tensor, latent: int) -> PPCA:
    """The closed-form maximum-likelihood PPCA of ``data`` ``[B, D]`` (Tipping & Bishop, 1999).

    Mean = sample mean; σ² = mean of the D − q smallest eigenvalues of the sample
    covariance; W = U_q (Λ_q − σ² I)^{1/2}, unique up to a rotation.
    """
    dim = data.shape[1]
    if not 1 <= latent < dim:
        raise TaskError(f"PPCA latent dimension must be in [1, {dim - 1}] for D={dim}, got {latent}")
    mean = data.mean(0)
    centred = data - mean
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(data))  # ascending
    noise = eigenvalues[: dim - latent].mean()
    top = eigenvalues[dim - latent :]
    loadings = eigenvectors[:, dim - latent :] * (top - noise).clamp(min=0).sqrt()
    return PPCA(mean, loadings, 0.5 * noise.log())


class PPCATask:
    """Data drawn from a known PPCA model, scored exactly.

    Args:
        dim: D, the number of coordinates (each one a "token").
        latent: q, the number of latent factors.
        noise: σ, the isotropic noise scale.
        n_sequences: number of data vectors.
        seed: seeds the true parameters and the data.
        save_data: ``maskpolicy-score`` writes the data and true parameters to ``data.npz``.
    """

    name = "ppca"

    def __init__(self, dim: int = 8, latent: int = 2, noise: float = 0.5, n_sequences: int = 200,
                 seed: int = 0, save_data: bool = False) -> None:
        if dim < 2:
            raise TaskError(f"ppca dim must be ≥ 2, got {dim}")
        if not 1 <= latent < dim:
            raise TaskError(f"ppca latent must be in [1, dim − 1] = [1, {dim - 1}], got {latent}")
        if not noise > 0:
            raise TaskError(f"ppca noise must be > 0, got {noise}")
        if n_sequences < 1:
            raise TaskError(f"ppca n_sequences must be ≥ 1, got {n_sequences}")
        self.dim, self.latent, self.n_sequences, self.seed, self.save_data = dim, latent, n_sequences, seed, save_data
        generator = torch.Generator().manual_seed(seed)
        normal = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
        self.model = PPCA(normal(dim), normal(dim, latent), torch.tensor(math.log(noise), dtype=torch.float64))
        self._data = self.sample(n_sequences, generator)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` fresh vectors from the true model, ``Float64[n, D]``."""
        latent = torch.randn(n, self.latent, generator=generator, dtype=torch.float64)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        model = self.model
        return model.mean + latent @ model.loadings.T + noise * model.log_noise.exp()

    def data(self) -> Tensor:
        return self._data

    def log_likelihood(self, data: Tensor, observed: Tensor | None = None) -> Tensor:
        """Exact ``log p(x_O)`` per row, ``Float64[B]``; ``observed`` ``Bool[B, D]`` (all when None)."""
        return self.model.log_likelihood(data, observed)

    def masked_log_probs(self, inputs: Tensor, masks: Tensor) -> Tensor:
        return self.model.masked_log_probs(inputs, masks)

    def arrays(self) -> dict[str, np.ndarray]:
        model = self.model
        return {"data": self._data.numpy(), "mean": model.mean.numpy(), "loadings": model.loadings.numpy(),
                "noise_std": model.log_noise.exp().numpy()}
