"""Evaluation of the demo model: base T2V model vs VTA model, every task, scored from the pixels.

Held-out clips (`world.eval_specs`, seeds far from training) give a caption, ground-truth frames and
ground-truth object positions. Each model runs each task on each clip with fixed seeds; the detector
(`pusa.train.detector`) reads colour, shape, motion and positions back from the generated frames.

Metrics (one row each):
- T2V: colour / shape accuracy; direction accuracy on the eight straight motions; motion accuracy on all.
- I2V (image = ground-truth frame 0, noise multiplier 0.2): PSNR of output frame 0 vs the image; motion
  accuracy (the object keeps moving as the caption says) and how often the object stays in every frame.
- start-end (frames 0 and last, multipliers 0.2 / 0.5): PSNR at both ends and the object-position error there.
- keyframes (first, middle, last latent slot): PSNR and position error at the conditioned frames.
- extension (the last 13 frames of the clip become latents 0-3, multipliers 0 / 0.3 / 0.4 / 0.5): position
  and velocity continuity across the boundary, on clips whose object moves in a straight line or stays put.
- transition (clip A's frames, then another clip B with another colour): A's object (its colour) in the first
  frame and B's in the last, and the position error at both ends.
- long video (image-to-video from the clip's frame 0, 4 chunks at the default chaining; not on growing /
  shrinking clips): `long_video_metrics` (jump and velocity change at the chunk boundaries, background and
  object colour drift from the first chunk to the last, chunks keeping the object), seconds per video.
- flicker: mean absolute frame difference of the background, over every generated clip (0 for the world).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pusa import recipes
from pusa.train import EVAL_TASKS
from pusa.train.detector import analyze_clip
from pusa.train.world import (
    LINEAR_MOTIONS,
    ClipSpec,
    canonical_caption,
    eval_specs,
    ground_truth,
    render_clip,
)

TASKS = EVAL_TASKS
# (key, label, unit-format) in table order
METRICS: tuple[tuple[str, str, str], ...] = (
    ("t2v_color", "T2V colour accuracy", "pct"),
    ("t2v_shape", "T2V shape accuracy", "pct"),
    ("t2v_direction", "T2V direction accuracy (straight motions)", "pct"),
    ("t2v_motion", "T2V motion accuracy (all motions)", "pct"),
    ("i2v_psnr0", "I2V frame-0 PSNR vs image (dB)", "db"),
    ("i2v_motion", "I2V motion accuracy", "pct"),
    ("i2v_kept", "I2V object kept in every frame", "pct"),
    ("se_psnr_start", "start-end PSNR first frame (dB)", "db"),
    ("se_psnr_end", "start-end PSNR last frame (dB)", "db"),
    ("se_pos_err", "start-end position error at ends (px)", "px"),
    ("kf_psnr", "keyframes PSNR at conditioned frames (dB)", "db"),
    ("kf_pos_err", "keyframes position error (px)", "px"),
    ("ext_pos_err", "extension position jump at boundary (px)", "px"),
    ("ext_vel_err", "extension velocity change (px/frame)", "px"),
    ("tr_both", "transition: A's object at the start and B's at the end", "pct"),
    ("tr_pos_err", "transition position error at both ends (px)", "px"),
    ("long_jump", "long video (4 chunks): position jump at boundaries (px)", "px"),
    ("long_vel", "long video: velocity change at boundaries (px/frame)", "px"),
    ("long_bg_drift", "long video: background colour drift, first to last chunk (/255)", "px"),
    ("long_obj_drift", "long video: object colour drift, first to last chunk (/255)", "px"),
    ("long_kept", "long video: chunks that keep the object and its colour", "pct"),
    ("long_seconds", "long video: seconds per video (this run)", "s"),
    ("flicker", "temporal flicker, background (0..255)", "px"),
    ("seconds_per_video", "seconds per video (this run)", "s"),
)


@dataclass(frozen=True)
class EvalSettings:
    num_clips: int = 22  # two per world motion
    eval_seed: int = 0  # which held-out set (`world.eval_specs(n, seed)`)
    num_inference_steps: int | None = None  # None: the model's default
    cfg: float = 3.0
    shift: float | None = None  # None: the pipeline's default
    i2v_noise_multiplier: float = 0.2
    tasks: tuple[str, ...] = TASKS
    num_frames: int | None = None  # clip length of every task (None: the model's own)
    long_chunks: int = 4
    cache: str = "off"  # the step cache (`pusa.caching`) and its threshold, as the request parameters
    cache_threshold: float | None = None  # None: the declared default


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between uint8 images (or float arrays in 0..255)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _position_error(frames: np.ndarray, spec: ClipSpec, frame_indices: Sequence[int]) -> float:
    """Mean distance (px) between the detected and the true object centre at the given output frames;
    a frame with no object detected counts as half the frame size."""
    truth = ground_truth(spec)
    analysis = analyze_clip(frames[list(frame_indices)])
    errors = []
    for detection, index in zip(analysis.detections, frame_indices, strict=True):
        if not detection.present:
            errors.append(min(spec.width, spec.height) / 2)
        else:
            errors.append(math.hypot(detection.cx - truth[index][0], detection.cy - truth[index][1]))
    return float(np.mean(errors))


def continuity(centroids: np.ndarray, boundary: int) -> tuple[float, float] | None:
    """(position jump px, velocity change px/frame) at output frame `boundary`: the velocity of the 5
    frames before it predicts where frame `boundary` should be; the 4 frames from it give the new
    velocity. None when the object is missing from any of those frames."""
    context = centroids[max(0, boundary - 5) : boundary]  # [<=5, 2]
    new = centroids[boundary : boundary + 4]  # [<=4, 2]
    if len(context) < 2 or len(new) < 1 or np.isnan(context).any() or np.isnan(new).any():
        return None
    velocity = (context[-1] - context[0]) / (len(context) - 1)  # px/frame
    jump = float(np.linalg.norm(new[0] - (context[-1] + velocity)))
    new_velocity = (new[-1] - context[-1]) / len(new)
    return jump, float(np.linalg.norm(new_velocity - velocity))


def long_video_metrics(frames: np.ndarray, plan: recipes.LongPlan, color: str | None = None) -> dict:
    """How a long video holds together, from its pixels (`plan`: its chunks).

    jump / velocity: `continuity` at each chunk boundary (the first frame a chunk gives), and, as the
    floor to compare with, at the middle of every chunk; lost: boundaries where the object is missing
    around it. background / object drift: mean absolute difference per channel (0..255) between the
    first and the last chunk's median background colour and median object colour. kept: per chunk,
    whether the object is in every frame with the colour `color` (default: the first chunk's)."""
    width = frames.shape[2]
    analyses = [analyze_clip(frames[c.frames[0] : c.frames[1] + 1]) for c in plan.chunks]
    color = color or analyses[0].color
    kept = [float(a.present_fraction == 1.0 and a.color == color) for a in analyses]
    jumps: list[float] = []
    velocities: list[float] = []
    inner_jumps: list[float] = []
    inner_velocities: list[float] = []
    lost = 0
    for chunk in plan.chunks:
        first, last = chunk.frames
        for at, jump_list, velocity_list in (
            (first, jumps, velocities),
            ((first + last + 1) // 2, inner_jumps, inner_velocities),
        ):
            if at < 5 or (chunk.index == 0 and jump_list is jumps):
                continue
            window = frames[at - 5 : at + 4]
            measured = continuity(analyze_clip(window).centroids, 5)
            if measured is None:
                lost += jump_list is jumps
                continue
            jump_list.append(measured[0])
            velocity_list.append(measured[1])

    def rgb(analysis, part: str) -> np.ndarray | None:
        if part == "background":
            return analysis.background_rgb
        values = [d.object_rgb for d in analysis.detections if d.present and d.object_rgb is not None]
        return np.median(np.asarray(values), axis=0) if values else None

    drift = {}
    for part in ("background", "object"):
        a, b = rgb(analyses[0], part), rgb(analyses[-1], part)
        drift[part] = math.nan if a is None or b is None else float(np.mean(np.abs(np.subtract(a, b))))
    return {
        "jump": _mean(jumps), "velocity": _mean(velocities), "inner_jump": _mean(inner_jumps),
        "inner_velocity": _mean(inner_velocities), "boundaries": len(plan.chunks) - 1, "lost": lost,
        "background_drift": drift["background"], "object_drift": drift["object"],
        "kept": float(np.mean(kept)), "chunks_kept": kept, "width": width,
    }  # fmt: skip


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate_pipeline(
    pipe: Any, settings: EvalSettings = EvalSettings(), lora_alpha: float | None = None
) -> dict:
    """Run every task on the held-out clips; returns {"metrics": {key: value}, "clips": [per-clip records],
    "settings": the evaluation settings and the model's sampling defaults that applied}."""
    d = pipe.defaults
    length = settings.num_frames or d.num_frames
    specs = eval_specs(settings.num_clips, settings.eval_seed, length, d.width, d.height)
    num_latent = pipe.num_latent_frames(length)
    common: dict[str, Any] = dict(
        num_inference_steps=settings.num_inference_steps, cfg=settings.cfg, lora_alpha=lora_alpha
    )
    common["num_frames"] = length
    if settings.shift is not None:
        common["shift"] = settings.shift
    if settings.cache != "off":
        common["cache"] = settings.cache
        if settings.cache_threshold is not None:
            common["cache_threshold"] = settings.cache_threshold
    per: dict[str, list[float]] = {key: [] for key, _, _ in METRICS}
    records, started, videos = [], time.perf_counter(), 0
    for i, spec in enumerate(specs):
        truth = render_clip(spec)  # [F, H, W, 3]
        prompt = canonical_caption(spec)
        seed = 1000 + i
        record: dict[str, Any] = {"seed": spec.seed, "prompt": prompt, "motion": spec.motion}
        moves_straight = spec.motion in LINEAR_MOTIONS
        if "t2v" in settings.tasks:
            out = pipe.text_to_video(prompt, seed=seed, **common).frames
            analysis = analyze_clip(out)
            per["t2v_color"].append(float(analysis.color == spec.color))
            per["t2v_shape"].append(float(analysis.shape == spec.shape))
            per["t2v_motion"].append(float(analysis.motion == spec.motion))
            if moves_straight:
                per["t2v_direction"].append(float(analysis.motion == spec.motion))
            per["flicker"].append(analysis.flicker)
            record["t2v"] = {"color": analysis.color, "shape": analysis.shape, "motion": analysis.motion}
            videos += 1
        if "i2v" in settings.tasks:
            out = pipe.image_to_video(
                truth[0], prompt, noise_multiplier=settings.i2v_noise_multiplier, seed=seed, **common
            ).frames
            analysis = analyze_clip(out)
            per["i2v_psnr0"].append(psnr(out[0], truth[0]))
            per["i2v_motion"].append(float(analysis.motion == spec.motion))
            per["i2v_kept"].append(float(analysis.present_fraction == 1.0 and analysis.color == spec.color))
            per["flicker"].append(analysis.flicker)
            record["i2v"] = {"psnr0": per["i2v_psnr0"][-1], "motion": analysis.motion}
            videos += 1
        if "start_end" in settings.tasks:
            out = pipe.frames_to_video([truth[0], truth[-1]], prompt, seed=seed, **common).frames
            per["se_psnr_start"].append(psnr(out[0], truth[0]))
            per["se_psnr_end"].append(psnr(out[-1], truth[-1]))
            per["se_pos_err"].append(_position_error(out, spec, [0, len(out) - 1]))
            per["flicker"].append(analyze_clip(out).flicker)
            record["start_end"] = {"psnr_start": per["se_psnr_start"][-1], "psnr_end": per["se_psnr_end"][-1]}
            videos += 1
        if "keyframes" in settings.tasks and num_latent >= 3:
            slots = [0, num_latent // 2, num_latent - 1]
            frame_indices = [4 * k for k in slots]
            out = pipe.frames_to_video([truth[f] for f in frame_indices], prompt, seed=seed, **common).frames
            per["kf_psnr"].append(float(np.mean([psnr(out[f], truth[f]) for f in frame_indices])))
            per["kf_pos_err"].append(_position_error(out, spec, frame_indices))
            per["flicker"].append(analyze_clip(out).flicker)
            record["keyframes"] = {"psnr": per["kf_psnr"][-1]}
            videos += 1
        if "extension" in settings.tasks and spec.motion != "bounces" and num_latent >= 3:
            multipliers = recipes.extension(length).noise_multipliers  # the pipeline's default context
            out = pipe.extend_video(truth, prompt, noise_multipliers=multipliers, seed=seed, **common).frames
            analysis = analyze_clip(out)
            boundary = 4 * (len(multipliers) - 1) + 1  # the context frames are output frames 0..boundary-1
            centroids = analysis.centroids  # [F, 2]
            context = centroids[max(0, boundary - 5) : boundary]  # [<=5, 2]
            new = centroids[boundary:]  # [4, 2]
            if np.isnan(context).any() or np.isnan(new).any():
                per["ext_pos_err"].append(min(spec.width, spec.height) / 2)
                per["ext_vel_err"].append(min(spec.width, spec.height) / 8)
            else:
                velocity = (context[-1] - context[0]) / (len(context) - 1)  # px/frame
                predicted = context[-1] + velocity  # where frame 13 should be
                per["ext_pos_err"].append(float(np.linalg.norm(new[0] - predicted)))
                new_velocity = (new[-1] - context[-1]) / len(new)
                per["ext_vel_err"].append(float(np.linalg.norm(new_velocity - velocity)))
            per["flicker"].append(analysis.flicker)
            videos += 1
        if "transition" in settings.tasks and num_latent >= 4:
            other = next((s for s in specs if s.color != spec.color), specs[(i + 1) % len(specs)])
            arrival = render_clip(other)
            out = pipe.transition(truth, arrival, canonical_caption(other), seed=seed, **common).frames
            first, last = analyze_clip(out[:1]).detections[0], analyze_clip(out[-1:]).detections[0]
            per["tr_both"].append(float(first.color == spec.color and last.color == other.color))
            ends = []
            for detection, at in ((first, ground_truth(spec)[-1]), (last, ground_truth(other)[0])):
                ends.append(
                    math.hypot(detection.cx - at[0], detection.cy - at[1])
                    if detection.present
                    else min(spec.width, spec.height) / 2
                )
            per["tr_pos_err"].append(float(np.mean(ends)))
            per["flicker"].append(analyze_clip(out).flicker)
            record["transition"] = {"start": first.color, "end": last.color, "arrival": other.color}
            videos += 1
        if "long" in settings.tasks and spec.motion not in ("grows", "shrinks"):
            plan = recipes.long_video(
                recipes.head_frames(
                    num_latent + (settings.long_chunks - 1) * (num_latent - recipes.LONG_CONTEXT)
                ),
                length,
                seed=seed,
            )
            long_started = time.perf_counter()
            out = pipe.long_video(
                prompt, plan.num_frames, image=truth[0], noise_multiplier=settings.i2v_noise_multiplier,
                chunk_frames=length, seed=seed, **{k: v for k, v in common.items() if k != "num_frames"},
            ).frames  # fmt: skip
            per["long_seconds"].append(time.perf_counter() - long_started)
            scores = long_video_metrics(out, plan, spec.color)
            per["long_jump"].append(scores["jump"])
            per["long_vel"].append(scores["velocity"])
            per["long_bg_drift"].append(scores["background_drift"])
            per["long_obj_drift"].append(scores["object_drift"])
            per["long_kept"].append(scores["kept"])
            record["long"] = {key: value for key, value in scores.items() if key != "width"}
            videos += 1
        records.append(record)
    elapsed = time.perf_counter() - started
    metrics = {key: _mean(values) for key, values in per.items() if key != "seconds_per_video"}
    metrics["seconds_per_video"] = elapsed / max(videos, 1)
    pct = (
        "t2v_color",
        "t2v_shape",
        "t2v_direction",
        "t2v_motion",
        "i2v_motion",
        "i2v_kept",
        "tr_both",
        "long_kept",
    )
    for key in pct:
        if not math.isnan(metrics[key]):
            metrics[key] *= 100.0
    used = {**asdict(settings), "lora_alpha": lora_alpha, "model": getattr(pipe, "identity", None)}
    used["num_inference_steps"] = settings.num_inference_steps or d.num_inference_steps
    return {"metrics": metrics, "clips": records, "num_clips": len(specs), "videos": videos, "settings": used}


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per metric, one column per model."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, unit in METRICS:
        cells = []
        for name in names:
            value = columns[name].get(key, math.nan)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            elif unit == "pct":
                cells.append(f"{value:.0f}%")
            elif unit == "db":
                cells.append(f"{value:.1f}")
            else:
                cells.append(f"{value:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _at(length: int | None) -> str:
    return "" if length is None else f" @{length}"


def evaluate_demo(
    model_dir: str | Path | None = None,
    settings: EvalSettings = EvalSettings(),
    lora_alphas: Sequence[float] | None = None,
    include_base: bool = True,
    progress: bool = True,
    lengths: Sequence[int | None] = (None,),
) -> dict[str, dict]:
    """Base model (no LoRA) and the VTA model at each alpha (None: the model's own), on the same clips and seeds.

    A folder without a LoRA (a run exported before its VTA stage) is scored as a base model alone, unless
    alphas are asked for: that is refused before anything runs. lengths: clip lengths to score each model
    at (None: its own), one column each ("VTA alpha 0.6 @33")."""
    from pusa.pipeline import PusaPipeline
    from pusa.weights.registry import folder_lora, resolve_model

    model = model_dir if model_dir is not None else "pusa-tiny"
    resolved = resolve_model(model)
    has_lora = resolved != "tiny-random" and folder_lora(resolved) is not None
    if not has_lora and lora_alphas:
        raise ValueError(
            f"{model}: the model folder ships no LoRA (pusa_model.json names none); drop --alphas"
        )
    if not has_lora and not include_base:
        raise ValueError(f"{model}: the model folder ships no LoRA, so there is only the base model to score")
    results: dict[str, dict] = {}
    if include_base:
        if progress:
            print("evaluating base (no LoRA) ...", flush=True)
        base = PusaPipeline.from_model(model, lora=None)
        for length in lengths:
            results["base" + _at(length)] = evaluate_pipeline(base, replace(settings, num_frames=length))
    if has_lora and (lora_alphas is None or lora_alphas):
        pipe = PusaPipeline.from_model(model)
        for alpha in lora_alphas if lora_alphas is not None else [pipe.defaults.lora_alpha]:
            if progress:
                print(f"evaluating VTA (LoRA alpha {alpha}) ...", flush=True)
            for length in lengths:
                column = f"VTA alpha {alpha}" + _at(length)
                results[column] = evaluate_pipeline(
                    pipe, replace(settings, num_frames=length), lora_alpha=alpha
                )
    return results
