"""Host RAM per memory tier for a two-expert model with a LoRA on each expert: computed at Wan2.2-A14B size,
measured at small sizes.

    python benchmarks/host_memory.py [--skip-measure] [--sizes tiny,wide]

Computed (bf16, byte counts of Wan2.1-14B-shaped experts built on the meta device): what each tier keeps
in host RAM, anonymous memory only (pages of the safetensors files mapped while a tensor is read are page
cache, which the kernel reclaims instead of killing the process). Always on the host: the umT5-XXL encoder
(streamed through the GPU for each encode) and the LoRA files themselves (not counted: their size is the
user's). The LoRA's pristine weights (the Pusa LoRA's targets: every block's attention q/k/v/o and ffn
Linears, 28 GB per expert) are re-read from the model's safetensors files since issue 15's host tier; the
"before" column is the old accounting, which kept them as copies in RAM.
- full: both experts on the GPU (loaded straight to it);
- swap: one expert on the GPU, both experts' weights in pinned host memory;
- balanced / low: both experts streamed layer by layer from pinned host memory;
- balanced / low, inactive from files (what `auto` and these tiers do when host RAM cannot pin both: the
  planner `runtime.memory.plan_expert_memory`): the active expert streamed from pinned host memory, the
  other in no memory, read from its files at the boundary;
- stream: one expert on the GPU, the other in no memory (read from its files at the boundary; the transient
  is one tensor at a time, the largest 0.31 GB).

Measured: each tier in a fresh process on this machine (a CPU here, so every tier's "device" is host RAM:
"full" holds both experts in RAM, "stream" one), the peak resident set (`VmHWM`, else `ru_maxrss`) during
one 4-step text-to-video (cfg 1) with a LoRA on every target Linear of each expert, loaded from a Wan-original folder;
"over base" subtracts the process's peak before the model loads (torch and the imports). `tiny` is
tiny-random-a14b (a few MB: the tiers cannot differ measurably); `wide` the same folder with 1024-wide,
8-block experts (0.5 GB float32 each) so the differences show. "copies" runs the fusers with RAM pristine
copies (as before) for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GB = 1e9
# "balanced-files": balanced with a host budget too small to pin both experts (the inactive one is then read
# from its files at the boundary)
# "+adapter": the LoRA stack as unfused PEFT adapters (`lora_mode="adapter"`: nothing re-fused at a boundary)
TIERS = ("full", "swap", "balanced", "low", "balanced-files", "low-files", "stream", "stream+adapter")
CHILD = r"""
import json, resource, sys
import torch


def peak_mb():
    # VmHWM: this process's own peak (a new one at exec; ru_maxrss would carry the parent's peak over)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


from pusa.pipeline import PusaPipeline
from pusa.weights.sources import FileWeights
tier, folder, high, low, copies = sys.argv[1:6]
if copies == "1":
    FileWeights.reproduces = lambda self, name, tensor: False  # the fusers keep RAM copies, as before
base = peak_mb()
memory, _, mode = tier.partition("+")
memory, _, files = memory.partition("-")
pipe = PusaPipeline.from_pretrained(folder, memory=memory, lora=[f"{high}:1.5@high", f"{low}:1.4@low"],
                                    host_bytes=1 if files else None, lora_mode=mode or "fuse")
assert pipe.acceleration["memory_tier"] == memory, pipe.acceleration
out = pipe.text_to_video("a fox", num_inference_steps=4, cfg=1.0, width=64, height=64, num_frames=17, seed=0)
peak = peak_mb()
print(json.dumps({"base_mb": base, "peak_mb": peak, "swaps": out.settings.get("expert_swaps")}))
"""


def computed() -> list[tuple[str, float, float]]:
    import torch
    from accelerate import init_empty_weights

    from pusa.model import PusaTransformer3DModel
    from pusa.weights.lora import PUSA_LORA_TARGETS
    from pusa.weights.registry import WAN_14B_TRANSFORMER_CONFIG

    with init_empty_weights():
        expert = PusaTransformer3DModel(**WAN_14B_TRANSFORMER_CONFIG)
    params = sum(p.numel() for p in expert.parameters())
    linears = [
        m.weight
        for name, m in expert.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in PUSA_LORA_TARGETS)
    ]
    targets = sum(w.numel() for w in linears)
    largest = 2 * max(p.numel() for p in expert.parameters())
    expert_b, pristine_b = 2 * params, 2 * targets  # bf16
    text_b = 2 * 5.68e9  # umT5-XXL encoder, bf16 (the VAE stays on the GPU in every tier)
    print(f"one expert: {params / 1e9:.2f}B parameters = {expert_b / GB:.1f} GB bf16; Pusa LoRA targets "
          f"{targets / 1e9:.2f}B = {pristine_b / GB:.1f} GB of pristine weights per expert; largest tensor "
          f"{largest / GB:.2f} GB")  # fmt: skip
    before = text_b + 2 * pristine_b  # the old accounting: pristine copies of both experts in RAM
    return [
        ("full", before, text_b),
        ("swap", before + 2 * expert_b, text_b + 2 * expert_b),
        ("balanced", before + 2 * expert_b, text_b + 2 * expert_b),
        ("low", before + 2 * expert_b, text_b + 2 * expert_b),
        ("balanced / low, inactive from files", float("nan"), text_b + expert_b),
        ("stream", float("nan"), text_b + largest),
    ]


def write_folder(root: Path, wide: bool) -> tuple[Path, Path, Path]:
    """tiny-random-a14b in Wan's original layout (experts made wider for `wide`), and a LoRA per expert
    on every Pusa target Linear."""
    import torch
    from safetensors.torch import save_file

    from pusa.model import PusaTransformer3DModel
    from pusa.weights.lora import PUSA_LORA_TARGETS
    from pusa.weights.registry import TINY_A14B_TRANSFORMER_CONFIG
    from pusa.weights.wan_original import write_dit_original, write_two_expert_folder

    folder = write_two_expert_folder(root / "model", "wan-original")
    config = dict(TINY_A14B_TRANSFORMER_CONFIG)
    if wide:
        config.update(num_attention_heads=8, attention_head_dim=128, ffn_dim=4096, num_layers=8)
    generator = torch.Generator().manual_seed(0)
    loras = []
    for index, sub in enumerate(("high_noise_model", "low_noise_model")):
        torch.manual_seed(index)
        expert = PusaTransformer3DModel(**config).eval()
        if wide:
            for old in (folder / sub).glob("*.safetensors"):
                old.unlink()
            write_dit_original(expert, folder / sub, num_shards=3)
        state = {}
        for name, module in expert.named_modules():
            if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in PUSA_LORA_TARGETS):
                out_features, in_features = module.weight.shape
                state[f"{name}.lora_A.weight"] = torch.randn(4, in_features, generator=generator) * 0.01
                state[f"{name}.lora_B.weight"] = torch.randn(out_features, 4, generator=generator) * 0.01
        loras.append(root / f"{sub}_lora.safetensors")
        save_file(state, str(loras[-1]))
    return folder, loras[0], loras[1]


def measure(tier: str, folder: Path, high: Path, low: Path, copies: bool) -> dict:
    args = [sys.executable, "-c", CHILD, tier, str(folder), str(high), str(low), "1" if copies else "0"]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-measure", action="store_true")
    parser.add_argument("--sizes", default="tiny,wide", help="comma-separated: tiny, wide")
    args = parser.parse_args()
    print("| tier | host GB at Wan2.2-A14B, before (RAM pristine copies) | host GB now |")
    print("|---|---:|---:|")
    for tier, before, now in computed():
        shown = "(not then)" if before != before else f"{before / GB:.1f}"
        print(f"| {tier} | {shown} | {now / GB:.1f} |")
    if args.skip_measure:
        return
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder, high, low = write_folder(Path(tmp), wide=size == "wide")
            print(f"\n| tier ({size}, this machine) | peak RSS MB | over base MB | over base, RAM copies MB | expert swaps |")  # fmt: skip
            print("|---|---:|---:|---:|---|")
            for tier in TIERS:
                now = measure(tier, folder, high, low, copies=False)
                old = measure(tier, folder, high, low, copies=True)
                if "error" in now or "error" in old:
                    print(f"| {tier} | failed: {now.get('error') or old.get('error')} | | | |")
                    continue
                print(f"| {tier} | {now['peak_mb']:.0f} | {now['peak_mb'] - now['base_mb']:.0f} | "
                      f"{old['peak_mb'] - old['base_mb']:.0f} | {now['swaps']} |")  # fmt: skip


if __name__ == "__main__":
    main()
