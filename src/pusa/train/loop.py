"""The training loop every stage runs: `Stage` (what to train), `train_stage` (resume, step, log, checkpoint),
the cosine learning-rate schedule, `RunLog` (`<run_dir>/log.jsonl`), the checkpoint files
(`<run_dir>/<stage>/checkpoint.pt`) and `apply_ema` (a checkpoint's EMA weights into a module)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


def cosine_lr(step: int, progress: float, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio * lr` as `progress` goes 0 -> 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class RunLog:
    """Appends one JSON object per line to `<run_dir>/log.jsonl` (stage, step, loss, lr, ...)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "log.jsonl"

    def write(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


@dataclass
class Stage:
    """What the loop needs to train one stage.

    modules: everything whose state a checkpoint keeps, by name.
    trainable: the named parameters the optimizer updates (an EMA copy of them is kept too).
    loss_fn(step) -> (loss, extra metrics): builds its own batch from the step number, so a resumed run sees
        the same batches as an uninterrupted one.
    """

    name: str
    modules: dict[str, nn.Module]
    trainable: dict[str, nn.Parameter]
    loss_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]]
    steps: int
    lr: float
    warmup: int
    weight_decay: float = 0.0
    ema_decay: float | None = None
    eval_fn: Callable[[], dict[str, float]] | None = None
    eval_every: int = 0
    # Wall-clock budget: on a shared CPU the step rate varies, so a stage may end (and its learning rate
    # anneal) by time instead of by step count: progress = max(step / steps, elapsed / budget).
    time_budget_s: float | None = None


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "checkpoint.pt"


def load_checkpoint(run_dir: Path, stage: str) -> dict[str, Any]:
    path = checkpoint_path(run_dir, stage)
    if not path.is_file():
        raise FileNotFoundError(f"stage {stage!r} has no checkpoint at {path}; run that stage first")
    return torch.load(path, map_location="cpu", weights_only=False)


def stage_finished(run_dir: Path, stage: str) -> bool:
    path = checkpoint_path(run_dir, stage)
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    return bool(state.get("finished"))


def train_stage(stage: Stage, run_dir: Path, log: RunLog, checkpoint_every: int, log_every: int) -> dict:
    """The loop: resume if a checkpoint exists, then step, log, checkpoint. Returns the final checkpoint."""
    path = checkpoint_path(run_dir, stage.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = list(stage.trainable.values())
    # On a GPU the tiny models are launch-bound: one fused optimizer kernel, one EMA call, and no
    # host-device sync except on logging steps.
    fused = all(p.device.type == "cuda" for p in params) or None
    optimizer = torch.optim.AdamW(
        params, lr=stage.lr, betas=(0.9, 0.99), weight_decay=stage.weight_decay, fused=fused
    )
    ema = {name: p.detach().clone() for name, p in stage.trainable.items()} if stage.ema_decay else None
    step, elapsed_before = 0, 0.0
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)
        for name, module in stage.modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        ema = state.get("ema")
        if ema is not None:  # saved from wherever it trained; continue where the parameters are now
            ema = {name: ema[name].to(p.device) for name, p in stage.trainable.items()}
        step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        torch.set_rng_state(state["torch_rng"])
        log.write(stage=stage.name, event="resume", step=step)

    started = time.perf_counter()

    def progress() -> float:
        done = step / stage.steps
        if stage.time_budget_s:
            done = max(done, (elapsed_before + time.perf_counter() - started) / stage.time_budget_s)
        return done

    def save(finished: bool = False) -> dict:
        state = {
            "stage": stage.name,
            "step": step,
            "steps": stage.steps,
            "finished": finished,
            "elapsed_s": elapsed_before + time.perf_counter() - started,
            "modules": {name: m.state_dict() for name, m in stage.modules.items()},
            "optimizer": optimizer.state_dict(),
            "ema": ema,
            "torch_rng": torch.get_rng_state(),
        }
        atomic_save(state, path)
        return state

    for module in stage.modules.values():
        module.train()
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, dynamic_ncols=True)
    running, state = None, None  # running: on-device EMA of the loss, read on logging steps
    while progress() < 1.0:
        lr = cosine_lr(step, progress(), stage.lr, stage.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, metrics = stage.loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                targets = [ema[name] for name in stage.trainable]
                torch._foreach_lerp_(targets, [p.detach() for p in params], 1.0 - stage.ema_decay)
        step += 1
        loss = loss.detach()
        running = loss.clone() if running is None else running.mul_(0.95).add_(loss, alpha=0.05)
        bar.update(1)
        if step % log_every == 0 or step == stage.steps:
            value, average = loss.item(), running.item()
            bar.set_postfix(loss=f"{average:.4f}", lr=f"{lr:.1e}")
            elapsed = elapsed_before + time.perf_counter() - started
            log.write(stage=stage.name, step=step, loss=value, loss_avg=average, lr=lr,
                      grad_norm=float(grad_norm), elapsed_s=round(elapsed, 1), **metrics)  # fmt: skip
        if stage.eval_fn is not None and stage.eval_every and step % stage.eval_every == 0:
            for module in stage.modules.values():
                module.eval()
            result = stage.eval_fn()
            for module in stage.modules.values():
                module.train()
            log.write(stage=stage.name, step=step, event="eval", **result)
            bar.write(f"{stage.name} step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()))
        if step % checkpoint_every == 0:
            state = save()
    state = save(finished=True)
    log.write(stage=stage.name, event="finished", step=step, elapsed_s=round(state["elapsed_s"], 1))
    bar.close()
    for module in stage.modules.values():
        module.eval()
    return state


def apply_ema(stage_state: dict, module: nn.Module, prefix: str) -> None:
    """Copy the EMA of a checkpoint's trainable parameters named `prefix.<param>` into `module`."""
    ema = stage_state.get("ema") or {}
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in ema.items():
            if name.startswith(prefix + "."):
                params[name[len(prefix) + 1 :]].copy_(value)
