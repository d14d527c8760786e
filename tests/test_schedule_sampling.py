"""Schedule, conditioning and the Euler sampler against pusa-algorithm.md sections 4-6.

The sampler is checked against a loop written here straight from the doc's pseudo-code, driven by a
deterministic toy velocity so every number is known; no model is needed.
"""

from __future__ import annotations

import pytest
import torch

from pusa.conditioning import Conditioning
from pusa.sampling import Cancelled, StepInfo, sample
from pusa.schedule import DEFAULT_SHIFT, NUM_TRAIN_TIMESTEPS, flow_sigmas, shift_sigmas, sigma_to_timestep

# pusa-algorithm.md section 4, N = 10, shift 5.0
DOC_SIGMAS_10 = [1.0, 0.9783, 0.9524, 0.9211, 0.8824, 0.8333, 0.7692, 0.6818, 0.5556, 0.3571, 0.0]

BATCH, CHANNELS, FRAMES, HEIGHT, WIDTH = 2, 3, 5, 2, 3


# ---------------------------------------------------------------- schedule
def test_flow_sigmas_match_the_documented_list():
    sigmas = flow_sigmas(10, 5.0)
    assert sigmas.shape == (11,)
    assert sigmas.dtype == torch.float64
    assert torch.allclose(sigmas, torch.tensor(DOC_SIGMAS_10, dtype=torch.float64), atol=5e-5, rtol=0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


@pytest.mark.parametrize("num_steps", [1, 2, 4, 10, 50])
def test_flow_sigmas_length_order_and_ends(num_steps):
    sigmas = flow_sigmas(num_steps)
    assert len(sigmas) == num_steps + 1
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), "sigmas must strictly decrease"


def test_flow_sigmas_follow_the_shift_formula():
    num_steps, shift = 7, 3.0
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:num_steps]
    expected = shift * u / (1.0 + (shift - 1.0) * u)
    sigmas = flow_sigmas(num_steps, shift)
    assert torch.allclose(sigmas[:num_steps], expected, atol=1e-12, rtol=0)
    assert sigmas[num_steps] == 0.0


def test_shift_sigmas_formula_and_identity_at_shift_one():
    u = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    assert torch.allclose(shift_sigmas(u, 5.0), 5.0 * u / (1.0 + 4.0 * u), atol=1e-12, rtol=0)
    assert torch.allclose(shift_sigmas(u, 1.0), u, atol=1e-12, rtol=0)
    # A shift > 1 spends more of the path at high noise.
    assert bool((shift_sigmas(u[1:-1], DEFAULT_SHIFT) > u[1:-1]).all())


def test_sigma_to_timestep_is_the_thousand_scale_and_not_truncated():
    assert NUM_TRAIN_TIMESTEPS == 1000
    sigma = torch.tensor([1.0, 0.97826, 0.0], dtype=torch.float64)
    assert torch.equal(sigma_to_timestep(sigma), sigma * 1000)
    assert sigma_to_timestep(sigma)[1] != 978.0


@pytest.mark.parametrize("num_steps", [0, -3])
def test_flow_sigmas_rejects_no_steps(num_steps):
    with pytest.raises(ValueError, match=rf"num_steps={num_steps}"):
        flow_sigmas(num_steps)


def test_flow_sigmas_rejects_non_positive_shift():
    with pytest.raises(ValueError, match=r"shift=0"):
        flow_sigmas(4, 0.0)


# ---------------------------------------------------------------- Conditioning
def _clean_latents(num_positions: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, CHANNELS, num_positions, HEIGHT, WIDTH, generator=generator)


def _noise(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, CHANNELS, FRAMES, HEIGHT, WIDTH, generator=generator)


def test_sigma_scale():
    cond = Conditioning((0, 3), (0.0, 0.4), _clean_latents(2))
    scale = cond.sigma_scale(FRAMES)
    assert scale.dtype == torch.float64
    assert scale.tolist() == [0.0, 1.0, 1.0, 0.4, 1.0]
    assert Conditioning.none().sigma_scale(3).tolist() == [1.0, 1.0, 1.0]


def test_initial_latents_slots():
    z = _clean_latents(2)
    eps = _noise()
    cond = Conditioning((0, 3), (0.0, 0.3), z)
    x = cond.initial_latents(eps)
    assert torch.equal(x[:, :, 0], z[:, :, 0]), "multiplier 0 must give exactly the clean latent"
    assert torch.allclose(x[:, :, 3], 0.7 * z[:, :, 1] + 0.3 * eps[:, :, 3], atol=1e-7, rtol=0)
    for free in (1, 2, 4):
        assert torch.equal(x[:, :, free], eps[:, :, free])
    assert not torch.equal(x[:, :, 3], eps[:, :, 3])


def test_initial_latents_leaves_the_noise_untouched():
    eps = _noise()
    before = eps.clone()
    Conditioning((1,), (0.0,), _clean_latents(1)).initial_latents(eps)
    assert torch.equal(eps, before)
    assert torch.equal(Conditioning.none().initial_latents(eps), eps)


# ---------------------------------------------------------------- the sampler
class ToyVelocity:
    """Deterministic `v = 0.5*x + text * t/1000 + 0.1 * frame_index`, recording every call.

    `text` is a scalar tensor so positive and negative passes differ; `big_frame` adds a huge velocity
    at one frame to show that a multiplier-0 frame still cannot move.
    """

    def __init__(self, big_frame: int | None = None) -> None:
        self.calls: list[tuple[float, torch.Tensor]] = []
        self.big_frame = big_frame

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, text: object) -> torch.Tensor:
        assert timestep.shape == (x.shape[0], x.shape[2])
        self.calls.append((float(text), timestep.clone()))
        per_frame = timestep[:, None, :, None, None] / 1000.0  # [B, 1, F, 1, 1]
        frame_index = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
        v = 0.5 * x + text * per_frame + 0.1 * frame_index
        if self.big_frame is not None:
            v[:, :, self.big_frame] += 1e6
        return v


def reference_sample(velocity, eps, sigmas, positions, multipliers, clean, text, negative_text, cfg):
    """pusa-algorithm.md section 5, line by line."""
    num_frames = eps.shape[2]
    x = eps.clone()
    for j, (c, m) in enumerate(zip(positions, multipliers, strict=True)):
        x[:, :, c] = (1 - m) * clean[:, :, j] + m * eps[:, :, c]
    for i in range(len(sigmas) - 1):
        sigma_f = torch.full((num_frames,), float(sigmas[i]), dtype=torch.float64)
        sigma_next_f = torch.full((num_frames,), float(sigmas[i + 1]), dtype=torch.float64)
        t_f = 1000 * sigma_f.clone()
        for c, m in zip(positions, multipliers, strict=True):
            sigma_f[c] = m * sigmas[i]
            sigma_next_f[c] = m * sigmas[i + 1]
            t_f[c] = t_f[c] * m
        timestep = t_f.float().unsqueeze(0).expand(eps.shape[0], num_frames)
        v = velocity(x, timestep, text)
        if cfg != 1:
            v_neg = velocity(x, timestep, negative_text)
            v = v_neg + cfg * (v - v_neg)
        x = x + v * (sigma_next_f - sigma_f).float().view(1, 1, num_frames, 1, 1)
    return x


POSITIONS, MULTIPLIERS = (0, 3), (0.0, 0.5)
TEXT, NEGATIVE_TEXT = torch.tensor(1.0), torch.tensor(-2.0)


@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_sample_matches_the_documented_loop(cfg):
    num_steps = 4
    sigmas = flow_sigmas(num_steps)
    eps, clean = _noise(), _clean_latents(2)
    ours, reference = ToyVelocity(), ToyVelocity()
    out = sample(ours, eps, sigmas, Conditioning(POSITIONS, MULTIPLIERS, clean), TEXT, NEGATIVE_TEXT, cfg)
    expected = reference_sample(
        reference, eps, sigmas, POSITIONS, MULTIPLIERS, clean, TEXT, NEGATIVE_TEXT, cfg
    )
    assert out.shape == eps.shape
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-6)
    assert not torch.allclose(out, eps, atol=1e-2)  # it actually moved

    # The same calls, with the same texts and per-frame timesteps, in the same order.
    assert len(ours.calls) == len(reference.calls) == num_steps * (2 if cfg != 1.0 else 1)
    for (text_ours, t_ours), (text_ref, t_ref) in zip(ours.calls, reference.calls, strict=True):
        assert text_ours == text_ref
        assert t_ours.dtype == torch.float32
        assert torch.allclose(t_ours, t_ref, atol=1e-4, rtol=0)


def test_sample_timesteps_per_step_and_per_frame():
    num_steps = 3
    sigmas = flow_sigmas(num_steps)
    velocity = ToyVelocity()
    sample(
        velocity,
        _noise(),
        sigmas,
        Conditioning(POSITIONS, MULTIPLIERS, _clean_latents(2)),
        TEXT,
        NEGATIVE_TEXT,
        3.0,
    )
    positive_calls = velocity.calls[0::2]
    negative_calls = velocity.calls[1::2]
    assert [text for text, _ in positive_calls] == [1.0] * num_steps
    assert [text for text, _ in negative_calls] == [-2.0] * num_steps
    for i, ((_, t_pos), (_, t_neg)) in enumerate(zip(positive_calls, negative_calls, strict=True)):
        assert torch.equal(t_pos, t_neg), "both CFG passes see the same timesteps"
        sigma = float(sigmas[i])
        # frame 0: multiplier 0 -> always clean; frame 3: multiplier 0.5 -> half the noise level
        expected_row = torch.tensor([0.0, 1000 * sigma, 1000 * sigma, 500 * sigma, 1000 * sigma])
        assert t_pos.shape == (BATCH, FRAMES)
        for b in range(BATCH):
            assert torch.allclose(t_pos[b], expected_row, atol=1e-3, rtol=0), (i, t_pos[b])
    assert float(positive_calls[0][1][0, 1]) == 1000.0  # the first step is pure noise


def test_a_multiplier_zero_frame_never_moves():
    clean = _clean_latents(2)
    seen: list[torch.Tensor] = []

    def callback(info: StepInfo) -> None:
        seen.append(info.latents[:, :, 0].clone())

    out = sample(
        ToyVelocity(big_frame=0),
        _noise(),
        flow_sigmas(5),
        Conditioning(POSITIONS, MULTIPLIERS, clean),
        TEXT,
        NEGATIVE_TEXT,
        3.0,
        callback,
    )
    assert len(seen) == 5
    for latents in seen:
        assert torch.equal(latents, clean[:, :, 0])
    assert torch.equal(out[:, :, 0], clean[:, :, 0])


def test_a_free_frame_with_the_same_huge_velocity_does_move():
    # Control for the test above: the huge velocity is real.
    out = sample(ToyVelocity(big_frame=1), _noise(), flow_sigmas(2), Conditioning.none(), TEXT)
    assert out[:, :, 1].abs().min() > 1e4


@pytest.mark.parametrize(("cfg", "calls_per_step"), [(1.0, 1), (3.0, 2), (1.5, 2)])
def test_velocity_calls_per_step(cfg, calls_per_step):
    velocity = ToyVelocity()
    sample(velocity, _noise(), flow_sigmas(4), Conditioning.none(), TEXT, NEGATIVE_TEXT, cfg)
    assert len(velocity.calls) == 4 * calls_per_step
    if cfg == 1.0:
        assert all(text == 1.0 for text, _ in velocity.calls), "cfg 1.0 must skip the negative text"


def test_cfg_one_ignores_the_negative_text():
    eps = _noise()
    a = sample(ToyVelocity(), eps, flow_sigmas(3), Conditioning.none(), TEXT, NEGATIVE_TEXT, 1.0)
    b = sample(ToyVelocity(), eps, flow_sigmas(3), Conditioning.none(), TEXT, None, 1.0)
    c = sample(ToyVelocity(), eps, flow_sigmas(3), Conditioning.none(), TEXT, NEGATIVE_TEXT, 3.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_does_not_modify_its_noise():
    eps = _noise()
    before = eps.clone()
    sample(ToyVelocity(), eps, flow_sigmas(3), Conditioning(POSITIONS, MULTIPLIERS, _clean_latents(2)), TEXT)
    assert torch.equal(eps, before)


def test_callback_sees_every_step():
    num_steps = 4
    sigmas = flow_sigmas(num_steps)
    infos: list[StepInfo] = []
    out = sample(ToyVelocity(), _noise(), sigmas, Conditioning.none(), TEXT, callback=infos.append)
    assert [info.step for info in infos] == list(range(num_steps))
    assert all(info.num_steps == num_steps for info in infos)
    assert [info.sigma for info in infos] == pytest.approx(sigmas[1:].tolist())
    assert torch.equal(infos[-1].latents, out)


def test_callback_returning_false_cancels():
    velocity = ToyVelocity()
    steps_seen: list[int] = []

    def cancel_after_second_step(info: StepInfo) -> bool:
        steps_seen.append(info.step)
        return info.step < 1

    with pytest.raises(Cancelled, match=r"after step 2 of 5"):
        sample(
            velocity, _noise(), flow_sigmas(5), Conditioning.none(), TEXT, callback=cancel_after_second_step
        )
    assert steps_seen == [0, 1]
    assert len(velocity.calls) == 2, "no model call after the cancel"


def test_callback_returning_none_or_true_continues():
    for result in (None, True):
        infos: list[int] = []

        def callback(info: StepInfo, result=result, infos=infos):
            infos.append(info.step)
            return result

        sample(ToyVelocity(), _noise(), flow_sigmas(3), Conditioning.none(), TEXT, callback=callback)
        assert infos == [0, 1, 2]
