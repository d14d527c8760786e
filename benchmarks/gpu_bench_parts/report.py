"""The benchmark's report: the 10-step I2V end-to-end estimate from the rows, the printed table, and merging
result files of split runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .specs import CACHE_SKIPS, NUM_STEPS


def _find(rows: list[dict], name: str, size_prefix: str | None = None) -> dict | None:
    for row in rows:
        size_ok = size_prefix is None or str(row.get("size", "")).startswith(size_prefix)
        if row["name"] == name and size_ok and row.get("status") == "ok":
            return row
    return None


def end_to_end(rows: list[dict], cache_skips: int = CACHE_SKIPS) -> dict[str, Any]:
    """10-step I2V at the first size: 2 text encodes + VAE encode + 10 CFG steps + VAE decode, per DiT
    variant measured there. Text encoding as the "full" tier runs it (onload, encode, offload). Rows with
    cache timings get a second estimate with `cache_skips` of the 10 steps skipped."""
    text = _find(rows, "umt5 encode (full tier)") or _find(rows, "umt5 encode (resident)")
    vae_encode = _find(rows, "wan vae encode")
    vae_decode = _find(rows, "wan vae decode")
    if not (text and vae_encode and vae_decode):
        return {}
    decode_size = vae_decode["size"]
    estimates = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("size") != decode_size or "ms_cfg_step" not in row:
            continue
        total = 2 * text["ms"] + vae_encode["ms"] + NUM_STEPS * row["ms_cfg_step"] + vae_decode["ms"]
        estimates[row["name"]] = {
            "size": decode_size,
            "total_s": total / 1e3,
            "text_s": 2 * text["ms"] / 1e3,
            "vae_encode_s": vae_encode["ms"] / 1e3,
            "denoise_s": NUM_STEPS * row["ms_cfg_step"] / 1e3,
            "vae_decode_s": vae_decode["ms"] / 1e3,
        }
        if "ms_cfg_step_cache_skipped" in row and cache_skips:
            # computed steps pay the cache's criterion too; skipped ones only embeddings, criterion and head
            denoise = (NUM_STEPS - cache_skips) * row["ms_cfg_step_cache_computed"]
            denoise += cache_skips * row["ms_cfg_step_cache_skipped"]
            total = 2 * text["ms"] + vae_encode["ms"] + denoise + vae_decode["ms"]
            estimates[f"{row['name']} + cache ({cache_skips} of {NUM_STEPS} steps skipped)"] = {
                **estimates[row["name"]],
                "total_s": total / 1e3,
                "denoise_s": denoise / 1e3,
                "cache_skips": cache_skips,
            }
    return estimates


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(meta: dict[str, Any], rows: list[dict]) -> None:
    print(f"\n{meta.get('mode', '?')} mode on {meta.get('device_name', '?')}; torch {meta.get('torch')}, "
          f"diffusers {meta.get('diffusers')}")  # fmt: skip
    attention = meta.get("attention", {})
    print(f"attention backend: {attention.get('selected')}")
    for label, timings in (attention.get("timings") or {}).items():
        cells = [
            f"{name} {ms:.2f}" if isinstance(ms, float) else f"{name} {ms[:40]}"
            for name, ms in timings.items()
        ]
        print(f"  ms per self-attention at {label}: " + "; ".join(cells))
    for label, errors in (attention.get("errors") or {}).items():
        cells = [f"{name} {error:.2e}" for name, error in errors.items()]
        print(f"  relative error vs cuDNN attention at {label}: " + "; ".join(cells))
    header = (
        f"{'row':<26}{'size':<14}{'tokens':>7}{'ms/fwd':>10}{'ms/CFG':>10}{'peak GiB':>9}"
        f"{'TFLOP/s':>10}{'MFU':>7}  notes"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['name']:<26}{row.get('size', ''):<14}{'':>7}  {row['status']}")
            continue
        if row["name"].endswith("(setup)"):
            extras = {k: v for k, v in row.items() if k.endswith(("_s", "_gib")) and k not in ("status",)}
            notes = ", ".join(f"{k}={v:.2f}" for k, v in extras.items())
            print(f"{row['name']:<26}{'':<14}{'':>7}  {notes}")
            continue
        ms = row.get("ms_forward", row.get("ms"))
        notes = []
        for key in ("attention", "placement", "compile_backend", "pixels", "latent_frames"):
            if key in row:
                notes.append(f"{key}={row[key]}")
        if "rel_error_vs_bf16" in row:
            notes.append(f"rel.err vs bf16={row['rel_error_vs_bf16']:.2e}")
        if "rel_error_vs_first_tier" in row:
            notes.append(f"rel.err vs tier-full={row['rel_error_vs_first_tier']:.2e}")
        if row.get("tiled"):
            notes.append("tiled")
        for key in ("fp8_compute", "cfg_batch", "compiled"):
            if row.get(key):
                notes.append(f"{key}={row[key]}")
        if "ms_cfg_step_cache_skipped" in row:
            notes.append(
                f"cache: computed {row['ms_cfg_step_cache_computed']:.1f} / skipped "
                f"{row['ms_cfg_step_cache_skipped']:.1f} ms per CFG step"
            )
        mfu = row.get("mfu")
        print(
            f"{row['name']:<26}{row.get('size', ''):<14}{_fmt(row.get('tokens'), 'd'):>7}{_fmt(ms, '.1f'):>10}"
            f"{_fmt(row.get('ms_cfg_step'), '.1f'):>10}{_fmt(row.get('peak_gib'), '.2f'):>9}"
            f"{_fmt(row.get('tflops_per_s'), '.3g'):>10}{'-' if mfu is None else f'{100 * mfu:.1f}%':>7}"
            f"  {', '.join(notes)}"
        )
    estimates = end_to_end(rows, meta.get("cache_skips", CACHE_SKIPS))
    if estimates:
        print(
            f"\n{NUM_STEPS}-step I2V estimate (2 text encodes + VAE encode + {NUM_STEPS} CFG steps + VAE decode):"
        )
        for name, e in estimates.items():
            print(
                f"  {name:<24}{e['total_s']:8.2f} s  = text {e['text_s']:.2f} + encode {e['vae_encode_s']:.2f} "
                f"+ denoise {e['denoise_s']:.2f} + decode {e['vae_decode_s']:.2f}  ({e['size']})"
            )


def merge(paths: list[Path], json_path: Path | None) -> None:
    payloads = [json.loads(path.read_text()) for path in paths]
    devices = {p.get("device_name") for p in payloads}
    if len(devices) > 1:
        print(
            f"warning: merging results from different devices: {sorted(map(str, devices))}", file=sys.stderr
        )
    meta = {k: v for k, v in payloads[0].items() if k not in ("rows", "end_to_end")}
    meta["merged_from"] = [str(path) for path in paths]
    rows = [row for payload in payloads for row in payload["rows"]]
    print_table(meta, rows)
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {**meta, "rows": rows, "end_to_end": end_to_end(rows, meta.get("cache_skips", CACHE_SKIPS))},
                indent=2,
            )
            + "\n"
        )
