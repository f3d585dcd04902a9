"""PPO's pieces against values worked out by hand (the arithmetic is written out in the comments)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/test_ppo.py

import math

import pytest
import torch

from llmtwin.training.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_penalty,
    token_entropy,
    token_rewards,
    whiten,
)

TOL = 1e-6


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(actual, expected):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual.to(torch.float64), expected, atol=TOL, rtol=0), (actual, expected)


def test_gae_full_row_by_hand():
    # γ = 0.9, λ = 0.5, V = [0.5, 0.6, 0.7], r = [0, 0, 1]; V after the end = 0.
    # t=2: δ = 1 + 0.9·0 − 0.7 = 0.3;            A = 0.3
    # t=1: δ = 0 + 0.9·0.7 − 0.6 = 0.03;         A = 0.03 + 0.45·0.3 = 0.165
    # t=0: δ = 0 + 0.9·0.6 − 0.5 = 0.04;         A = 0.04 + 0.45·0.165 = 0.11425
    # R = A + V = [0.61425, 0.765, 1.0]
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1.0, 1.0, 1.0]]), gamma=0.9, lam=0.5)
    close(adv, [[0.11425, 0.165, 0.3]])
    close(ret, [[0.61425, 0.765, 1.0]])


def test_gae_padding_is_ignored_and_bootstraps_zero():
    # row with mask [1, 1, 0]: the padded reward 5 and value 9 must not leak in.
    # t=1: δ = 1.0 + 0.9·0 − 0.4 = 0.6;          A = 0.6
    # t=0: δ = 0.2 + 0.9·0.4 − 0.1 = 0.46;       A = 0.46 + 0.45·0.6 = 0.73
    # R = [0.83, 1.0, 0]
    # second row: empty mask → all zeros.
    rewards = t([[0.2, 1.0, 5.0], [1.0, 2.0, 3.0]])
    values = t([[0.1, 0.4, 9.0], [1.0, 1.0, 1.0]])
    mask = t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.73, 0.6, 0.0], [0.0, 0.0, 0.0]])
    close(ret, [[0.83, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    # γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t.  r = [1, 2, 3], V = [0.5, 0.5, 0.5]:
    # A = [6 − 0.5, 5 − 0.5, 3 − 0.5] = [5.5, 4.5, 2.5]; R = [6, 5, 3]
    adv, ret = gae(t([[1.0, 2.0, 3.0]]), t([[0.5, 0.5, 0.5]]), t([[1.0, 1.0, 1.0]]), gamma=1.0, lam=1.0)
    close(adv, [[5.5, 4.5, 2.5]])
    close(ret, [[6.0, 5.0, 3.0]])


def test_whiten_by_hand():
    # masked x = [1, 2, 3]: μ = 2, σ² = (1 + 0 + 1)/3 = 2/3, σ = 0.816496580927726
    # (x − μ)/σ = [−1.224744871391589, 0, 1.224744871391589]; the padded 100 → 0
    out = whiten(t([[1.0, 2.0, 3.0, 100.0]]), t([[1.0, 1.0, 1.0, 0.0]]))
    close(out, [[-1.224744871391589, 0.0, 1.224744871391589, 0.0]])
    # shift_mean=False adds μ = 2 back: [0.775255128608411, 2, 3.224744871391589, 0]
    out = whiten(t([[1.0, 2.0, 3.0, 100.0]]), t([[1.0, 1.0, 1.0, 0.0]]), shift_mean=False)
    close(out, [[0.775255128608411, 2.0, 3.224744871391589, 0.0]])


def test_kl_penalty_k1_and_k3_by_hand():
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    # k1 = logp − ref = [0.5, −1.0]
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    # k3 with r = ref − logp = [−0.5, 1.0]: e^r − 1 − r
    #   e^−0.5 − 1 + 0.5 = 0.6065306597126334 − 0.5 = 0.1065306597126334
    #   e^1 − 1 − 1 = 2.718281828459045 − 2 = 0.718281828459045
    close(kl_penalty(logp, ref, "k3"), [0.1065306597126334, 0.718281828459045])
    # identical policies: no penalty of either kind
    close(kl_penalty(logp, logp, "k3"), [0.0, 0.0])
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k2")  # type: ignore[arg-type]


def test_clipped_policy_loss_by_hand():
    # log ρ = logp − old = [0.2, 0, −1.0]; ρ = [1.2214027581601699, 1, 0.36787944117144233]; ε = 0.2
    # tok0, A = 1:   −Aρ = −1.2214027581601699, −A·clip(ρ) = −1.2   → max −1.2 (clipped term used)
    # tok1, A = −2:  −Aρ = 2.0,                 −A·clip(ρ) = 2.0    → 2.0 (tie: not counted)
    # tok2, A = 0.5: −Aρ = −0.18393972058572117, −A·0.8 = −0.4       → −0.18393972058572117
    # loss = (−1.2 + 2.0 − 0.18393972058572117)/3 = 0.20535342647142627; clipfrac = 1/3
    # approx_kl = ½·(0.04 + 0 + 1)/3 = 0.17333333333333334
    logp, old = t([[-1.0, -0.5, -2.0]]), t([[-1.2, -0.5, -1.0]])
    adv = t([[1.0, -2.0, 0.5]])
    loss, clipfrac, approx_kl = clipped_policy_loss(logp, old, adv, t([[1.0, 1.0, 1.0]]), clip=0.2)
    close(loss, 0.20535342647142627)
    close(clipfrac, 1 / 3)
    close(approx_kl, 0.17333333333333334)
    # masking the third token: loss = (−1.2 + 2.0)/2 = 0.4, clipfrac 1/2, approx_kl = ½·0.04/2 = 0.01
    loss, clipfrac, approx_kl = clipped_policy_loss(logp, old, adv, t([[1.0, 1.0, 0.0]]), clip=0.2)
    close(loss, 0.4)
    close(clipfrac, 0.5)
    close(approx_kl, 0.01)


def test_clipped_policy_loss_gradient_is_zero_when_clipped():
    # ρ = e^0.5 > 1.2 with A > 0: the clipped (constant) term wins, so no gradient flows.
    logp = t([[-0.5]]).requires_grad_()
    loss, clipfrac, _ = clipped_policy_loss(logp, t([[-1.0]]), t([[1.0]]), t([[1.0]]), clip=0.2)
    loss.backward()
    close(loss, -1.2)
    close(clipfrac, 1.0)
    close(logp.grad, [[0.0]])


def test_clipped_value_loss_by_hand():
    # ε = 0.2
    # tok0: V − V_old = 0.5 → clipped to 0.2 → V_clip = 0.7; (1 − 2)² = 1, (0.7 − 2)² = 1.69 → 1.69 (clipped)
    # tok1: V − V_old = −0.1 (inside) → V_clip = 0.0; (0 + 1)² = 1 both → 1
    # tok2: V = V_old = 0.5; (0.5 − 0)² = 0.25 both → 0.25
    # loss = ½·(1.69 + 1 + 0.25)/3 = 0.49; clipfrac = 1/3
    values, old, ret = t([[1.0, 0.0, 0.5]]), t([[0.5, 0.1, 0.5]]), t([[2.0, -1.0, 0.0]])
    loss, clipfrac = clipped_value_loss(values, old, ret, t([[1.0, 1.0, 1.0]]), clip=0.2)
    close(loss, 0.49)
    close(clipfrac, 1 / 3)
    # only tok1 and tok2: ½·(1 + 0.25)/2 = 0.3125, clipfrac 0
    loss, clipfrac = clipped_value_loss(values, old, ret, t([[0.0, 1.0, 1.0]]), clip=0.2)
    close(loss, 0.3125)
    close(clipfrac, 0.0)


def test_entropy_by_hand():
    # logits [0, 0]: uniform over 2 → ln 2 = 0.6931471805599453
    # logits [0, ln 3]: p = [0.25, 0.75] → −0.25·ln 0.25 − 0.75·ln 0.75
    #   = 0.25·1.3862943611198906 + 0.75·0.2876820724517809 = 0.5623351446188083
    logits = t([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    close(token_entropy(logits), [[0.6931471805599453, 0.5623351446188083]])
    # mean of both: (0.6931471805599453 + 0.5623351446188083)/2 = 0.6277411625893768
    close(entropy_from_logits(logits, t([[1.0, 1.0]])), 0.6277411625893768)
    close(entropy_from_logits(logits, t([[1.0, 0.0]])), 0.6931471805599453)
    # large equal logits stay stable: uniform over 4 → ln 4 = 1.3862943611198906 (also in float32)
    big = torch.full((1, 1, 4), 1000.0)
    close(token_entropy(big), [[1.3862943611198906]])


def test_token_rewards_by_hand():
    # β = 0.5; r_t = −0.5·KL_t, plus the score on the last masked token
    # row0 (mask 1,1,1; score 2):  [−0.05, −0.1, −0.15 + 2] = [−0.05, −0.1, 1.85]
    # row1 (mask 1,1,0; score −1): [−0.25, 0.25 − 1, 0]    = [−0.25, −0.75, 0]
    # row2 (empty mask; score 3):  nothing to carry it → [0, 0, 0]
    score = t([2.0, -1.0, 3.0])
    kl = t([[0.1, 0.2, 0.3], [0.5, -0.5, 0.4], [1.0, 1.0, 1.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    close(token_rewards(score, kl, 0.5, mask), [[-0.05, -0.1, 1.85], [-0.25, -0.75, 0.0], [0.0, 0.0, 0.0]])


def test_pieces_compose_in_float32():
    # the same GAE row as above in float32 (what training uses) stays within 1e-6
    adv, _ = gae(t([[0.0, 0.0, 1.0]], torch.float32), t([[0.5, 0.6, 0.7]], torch.float32),
                 t([[1.0, 1.0, 1.0]], torch.float32), gamma=0.9, lam=0.5)
    close(adv, [[0.11425, 0.165, 0.3]])
