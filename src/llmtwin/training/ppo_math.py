"""The arithmetic of PPO, as pure torch functions on [batch, tokens] tensors (held against hand values in tests).

Shapes: every per-token tensor is [B, T] over the completion tokens; `mask` is 1.0 on real completion
tokens (up to and including EOS) and 0.0 on padding. Means are taken over all masked tokens of the batch
("token-level" means). Nothing here knows about models: ppo.py feeds it log-probs, values and logits.
"""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Σ x·m / Σ m (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, per token, masked, bootstrapping V = 0 after the last token.

        δ_t = r_t + γ·V_{t+1} − V_t            (V_{t+1} = 0 past the end of the row or on padding)
        A_t = δ_t + γ·λ·A_{t+1}                (A = 0 on padding; the recursion restarts there)
        R_t = A_t + V_t                        (the value target)

    Returns (advantages, returns), both zero where mask is 0. Masks are expected to be contiguous per row
    (completion tokens, then right padding).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − μ) / √(σ² + eps) over the masked tokens, with μ the masked mean and σ² the masked population
    variance Σ m·(x − μ)² / Σ m. With shift_mean=False the mean is added back (scale only). 0 on padding."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: Literal["k1", "k3"] = "k1") -> Tensor:
    """Per-token estimate of KL(policy ‖ reference) from the sampled token's log-probs.

        k1 = log π(a) − log π_ref(a)                       (unbiased, can be negative)
        k3 = exp(log π_ref(a) − log π(a)) − 1 − (log π_ref(a) − log π(a))   (≥ 0, lower variance)
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl kind {kind!r}: expected 'k1' or 'k3'")


def clipped_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate, returned as a loss to minimise, with its diagnostics.

        ρ_t = exp(log π(a_t) − log π_old(a_t))
        loss = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))
        clipfrac = mean_t [−A_t·clip(ρ_t) > −A_t·ρ_t]        (tokens where the clipped term is the one used)
        approx_kl = mean_t ½·(log π − log π_old)²

    Returns (loss, clipfrac, approx_kl); means over masked tokens.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio.pow(2), mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, Tensor]:
    """The value loss with PPO's clipping around the rollout-time values.

        V_clip = V_old + clip(V − V_old, −ε, ε)
        loss = ½ · mean_t max((V − R)², (V_clip − R)²)
        clipfrac = mean_t [(V_clip − R)² > (V − R)²]

    Returns (loss, clipfrac); means over masked tokens.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    clipfrac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return loss, clipfrac.detach()


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position: H = logsumexp(z) − Σ softmax(z)·z.  [B, T, V] → [B, T].

    z is shifted by its max first (H does not change; float32 keeps its precision with large logits)."""
    logits = logits - logits.max(dim=-1, keepdim=True).values.detach()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """The mean over masked tokens of the per-token entropy (token_entropy)."""
    return masked_mean(token_entropy(logits), mask)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last masked token of each row (−1 for an empty row)."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values


def token_rewards(score: Tensor, kl: Tensor, beta: float, mask: Tensor) -> Tensor:
    """Per-token rewards for PPO: r_t = −β·KL_t on every completion token, plus the sequence's score on
    its last completion token. [B] score, [B, T] kl → [B, T]; 0 on padding; a row with an empty mask gets
    no score (it has no token to carry it)."""
    rewards = -beta * kl * mask
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += score[rows].to(rewards.dtype)
    return rewards
