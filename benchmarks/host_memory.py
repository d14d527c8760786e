"""Host RAM per memory tier for a two-expert model: computed at Wan2.2-A14B size, measured at tiny size.

    python benchmarks/host_memory.py [--skip-measure]

Computed: byte counts of Wan2.1-14B-shaped experts built on the meta device (no memory), bf16, with the
Pusa LoRA's targets (every block's attention q/k/v/o and ffn Linears) whose pristine copies the fused LoRA
keeps on the host, plus umT5-XXL (5.7B parameters) and the VAE. What each tier keeps on the host:
- full: both experts resident on the GPU (loaded straight to it); host: the text encoder (streamed through
  the GPU for each encode) and the pristine LoRA copies;
- swap: one expert on the GPU, both experts' weights in pinned host memory, plus the above;
- balanced / low: both experts streamed from pinned host memory layer by layer, plus the above.
Measured: each tier on `tiny-random-a14b` in a fresh process on this machine's device (a CPU here: "full"
and "swap" place nothing elsewhere, so the numbers show the code runs, not GPU-machine savings), the peak
resident set (`ru_maxrss`) after one 4-step text-to-video with a LoRA on each expert.

There is no tier yet that streams the experts from the safetensors files memory-mapped: that is the one
that would lift the host wall (see the computed table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GB = 1e9
CHILD = r"""
import json, resource, sys, torch
from pusa.pipeline import PusaPipeline
tier, lora = sys.argv[1], sys.argv[2]
pipe = PusaPipeline.from_preset("tiny-random-a14b", memory=tier)
out = pipe.text_to_video("a fox", num_inference_steps=4, cfg=1.0, width=64, height=64, num_frames=17, seed=0,
                         loras=f"{lora}:1.5;1.4")
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "swaps": out.settings.get("expert_swaps")}))
"""


def computed() -> list[tuple[str, float]]:
    import torch
    from accelerate import init_empty_weights

    from pusa.model import PusaTransformer3DModel
    from pusa.weights.lora import PUSA_LORA_TARGETS
    from pusa.weights.registry import WAN_14B_TRANSFORMER_CONFIG

    with init_empty_weights():
        expert = PusaTransformer3DModel(**WAN_14B_TRANSFORMER_CONFIG)
    params = sum(p.numel() for p in expert.parameters())
    targets = sum(
        m.weight.numel()
        for name, m in expert.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in PUSA_LORA_TARGETS)
    )
    expert_b, pristine_b = 2 * params, 2 * targets  # bf16
    text_b = 2 * 5.68e9  # umT5-XXL encoder, bf16 (the VAE stays on the GPU in every tier)
    base = text_b + 2 * pristine_b  # text encoder + the LoRA's pristine copies, both experts
    print(f"one expert: {params / 1e9:.2f}B parameters = {expert_b / GB:.1f} GB bf16; Pusa LoRA targets "
          f"{targets / 1e9:.2f}B = {pristine_b / GB:.1f} GB of pristine copies per expert")  # fmt: skip
    return [
        ("full", base),
        ("swap", base + 2 * expert_b),
        ("balanced", base + 2 * expert_b),
        ("low", base + 2 * expert_b),
        ("no LoRA, balanced", text_b + 2 * expert_b),
    ]


def measure(tier: str, lora: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, tier, str(lora)], capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-measure", action="store_true")
    args = parser.parse_args()
    rows = computed()
    print("| tier | host GB at Wan2.2-A14B (computed, bf16) |")
    print("|---|---:|")
    for tier, size in rows:
        print(f"| {tier} | {size / GB:.1f} |")
    if args.skip_measure:
        return
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        lora = Path(tmp) / "lora.safetensors"
        generator = torch.Generator().manual_seed(0)
        save_file(
            {f"blocks.{b}.self_attn.q.lora_{k}.weight": torch.randn(*shape, generator=generator)
             for b in range(2) for k, shape in (("A", (4, 32)), ("B", (32, 4)))},
            str(lora),
        )  # fmt: skip
        print("\n| tier (tiny-random-a14b, this machine) | peak RSS MB | expert swaps |")
        print("|---|---:|---|")
        for tier in ("full", "swap", "balanced", "low"):
            result = measure(tier, lora)
            if "error" in result:
                print(f"| {tier} | failed: {result['error']} | |")
            else:
                print(f"| {tier} | {result['peak_rss_mb']:.0f} | {result['swaps']} |")


if __name__ == "__main__":
    main()
