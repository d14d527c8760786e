"""The memory-tier rows: ours without LoRA under each tier (full / balanced / low), outputs compared with the
first tier's.
"""

from __future__ import annotations

import time

import torch

from pusa.model import PusaTransformer3DModel
from pusa.runtime.kernels import apply_attention_backend, relative_error
from pusa.runtime.memory import MEMORY_TIERS, apply_memory_tier

from .dit_rows import dit_row
from .models import build_dit, dit_inputs, forward_fn
from .results import Results
from .specs import Size, Spec
from .timing import free_memory


def tiers_part(spec: Spec, size: Size, attention: str, results: Results) -> None:
    """Each tier on the same seeded weights and inputs; the output of every tier after the first is
    compared with the first's (offloading must not change a bit)."""
    reference: dict[str, torch.Tensor] = {}
    for tier in MEMORY_TIERS:

        def body(tier: str = tier) -> dict:
            # No LoRA here: a fused LoRA changes the weights' values, not the cost of moving or using them,
            # and fusing 14B weights (~47 s, mostly pinning the pristine copies) would triple this part.
            model = build_dit(PusaTransformer3DModel, spec)
            apply_attention_backend(model, attention, spec.device)
            model.to("cpu")  # where a real load leaves it before the tier places it
            free_memory(spec.device)
            started = time.perf_counter()
            placement = apply_memory_tier({"transformer": model}, tier, spec.device)
            setup_s = time.perf_counter() - started
            row = dit_row(spec, size, model, per_token=False)
            output = forward_fn(model, dit_inputs(spec, size, False))().float().cpu()
            if reference:
                row["rel_error_vs_first_tier"] = relative_error(output, reference["output"])
            else:
                reference["output"] = output
            return {**row, "tier_setup_s": setup_s, "placement": placement["transformer"]}

        results.run("tiers", f"tier-{tier}", size, spec.device, body)
