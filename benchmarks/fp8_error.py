"""Output error of fp8 compute (`--fp8-compute`, `runtime.kernels.enable_fp8_compute`) on pusa-tiny's DiT on the
CPU, where torch._scaled_mm runs the real float8 kernel: one forward at an I2V-like per-frame timestep, against
the float32 forward (and bf16 against float32 for scale).

  python benchmarks/fp8_error.py
"""

from __future__ import annotations

import copy

import torch

from pusa.pipeline import PusaPipeline
from pusa.runtime.kernels import enable_fp8_compute, relative_error


def main() -> None:
    torch.set_grad_enabled(False)
    pipe = PusaPipeline.from_model("pusa-tiny")
    fp32 = pipe.transformer
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, fp32.config.in_channels, 5, 16, 16, generator=generator)
    timestep = torch.tensor([[0.0, 700.0, 700.0, 700.0, 700.0]])
    text = pipe.encode_prompt("a red circle slides to the left over a dark blue background")
    reference = fp32(x, timestep, text, return_dict=False)[0]
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    bf16_out = bf16(x.bfloat16(), timestep, text.bfloat16(), return_dict=False)[0]
    print("| DiT forward | rel. error vs float32 | vs bf16 |")
    print("|---|---:|---:|")
    print(f"| bf16 | {relative_error(bf16_out, reference):.2e} | - |")
    for scaling in ("rowwise", "tensor"):
        model = copy.deepcopy(fp32)
        layers = enable_fp8_compute(model, scaling)
        out = model(x, timestep, text, return_dict=False)[0]
        print(
            f"| fp8 {scaling} ({layers} layers), float32 around it | {relative_error(out, reference):.2e} | - |"
        )
        model = copy.deepcopy(bf16)
        enable_fp8_compute(model, scaling)
        out = model(x.bfloat16(), timestep, text.bfloat16(), return_dict=False)[0]
        print(
            f"| fp8 {scaling}, bf16 around it | {relative_error(out, reference):.2e} | "
            f"{relative_error(out, bf16_out):.2e} |"
        )


if __name__ == "__main__":
    main()
