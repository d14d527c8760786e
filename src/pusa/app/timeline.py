"""The frame timeline: what conditioning positions mean, drawn as self-contained HTML.

One cell per latent frame. Conditioned cells are filled (darker = kept more closely, i.e. a lower
noise multiplier), show their multiplier, the pixel frames they cover and, for images, a thumbnail.
Pure: values in, an HTML string out; inline styles only, no external assets.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ..recipes import LongPlan, num_latent_frames, pixel_frames_of_latent

_ACCENT = "37, 99, 235"  # rgb of a kept frame (multiplier 0)
_BOX = "font-family: inherit; font-size: 12px; line-height: 1.35; color: inherit;"


def frames_text(latent: int) -> str:
    first, last = pixel_frames_of_latent(latent)
    return str(first) if first == last else f"{first}–{last}"


def _cell(latent: int, multiplier: float | None, thumbnail: str | None, source: str | None) -> str:
    frames = frames_text(latent)
    if multiplier is None:
        title = f"latent {latent} · frames {frames} · generated"
        block = (
            '<div style="height: 30px; border-radius: 4px; border: 1px dashed rgba(127, 127, 127, 0.55); '
            'background: rgba(127, 127, 127, 0.10);"></div>'
        )
        below = ""
    else:
        alpha = 1.0 - 0.8 * multiplier
        ink = "#ffffff" if alpha > 0.55 else "inherit"
        title = (
            f"latent {latent} · frames {frames} · {source or 'conditioned'} · noise multiplier {multiplier:g}"
        )
        image = (
            f'<img src="{escape(thumbnail, quote=True)}" alt="" style="display: block; width: 100%; '
            'height: 44px; object-fit: cover; border-radius: 3px 3px 0 0;">'
            if thumbnail
            else ""
        )
        block = (
            f'<div style="border-radius: 4px; border: 1px solid rgb({_ACCENT}); '
            f'background: rgba({_ACCENT}, {alpha:.2f}); color: {ink}; overflow: hidden;">{image}'
            f'<div style="height: 28px; display: flex; align-items: center; justify-content: center; '
            f'font-weight: 600; font-size: 11px;">{multiplier:g}</div></div>'
        )
        first, last = pixel_frames_of_latent(latent)
        # "13–16" on one line where the cell is wide enough, wrapped after the dash where it is not.
        parts = [str(first)] if first == last else [f"{first}–", str(last)]
        below = "".join(f"<span>{part}</span>" for part in parts)
    return (
        f'<div class="pusa-timeline-cell" data-latent="{latent}" title="{escape(title, quote=True)}" '
        'style="min-width: 0; text-align: center;">'
        f'<div style="font-size: 10px; opacity: 0.6;">{latent}</div>{block}'
        f'<div style="font-size: 10px; margin-top: 2px; font-variant-numeric: tabular-nums; display: flex; '
        f'flex-wrap: wrap; justify-content: center;">{below}</div></div>'
    )


def timeline_html(
    num_frames: int,
    positions: Sequence[int],
    noise_multipliers: Sequence[float],
    thumbnails: Sequence[str | None] = (),
    sources: Sequence[str] = (),
    note: str = "",
) -> str:
    """Timeline of a `num_frames` video conditioned at latent `positions` (already validated).

    thumbnails: per position, an image URL (e.g. a `data:` URI) or None.
    sources:    per position, what the frame comes from ("image 1", "source latent 3", ...).
    """
    num_latent = num_latent_frames(num_frames)
    by_latent = {
        position: (
            float(multiplier),
            thumbnails[j] if j < len(thumbnails) else None,
            sources[j] if j < len(sources) else None,
        )
        for j, (position, multiplier) in enumerate(zip(positions, noise_multipliers, strict=True))
    }
    cells = "".join(_cell(k, *by_latent.get(k, (None, None, None))) for k in range(num_latent))
    legend = "".join(
        f"<li><b>latent {k}</b> = frame{'s' if k else ''} {frames_text(k)}: "
        f"{escape(source or 'conditioned')}, noise multiplier {multiplier:g}</li>"
        for k, (multiplier, _, source) in sorted(by_latent.items())
    )
    caption = (
        f"<b>{num_frames} frames = {num_latent} latent frames.</b> Latent 0 is frame 0; latent k covers frames "
        "4k−3…4k. Filled cells are conditioned (darker = kept more closely); dashed ones are generated."
    )
    return (
        f'<div class="pusa-timeline" style="{_BOX}">'
        f'<div style="margin-bottom: 6px;">{caption}</div>'
        f'<div style="display: grid; grid-template-columns: repeat({num_latent}, minmax(26px, 1fr)); gap: 3px; '
        f'overflow-x: auto; padding-bottom: 2px;">{cells}</div>'
        + (f'<ul style="margin: 6px 0 0 1.1em; padding: 0;">{legend}</ul>' if legend else "")
        + (f'<div style="margin-top: 4px; opacity: 0.75;">{escape(note)}</div>' if note else "")
        + "</div>"
    )


def error_html(message: str) -> str:
    """A form error, shown where the user is looking."""
    return (
        f'<div class="pusa-error" role="alert" style="{_BOX} padding: 8px 10px; border-radius: 6px; '
        'border: 1px solid #dc2626; background: rgba(220, 38, 38, 0.08); color: #b91c1c;">'
        f"<b>Cannot use this:</b> {escape(message)}</div>"
    )


def long_timeline_html(plan: LongPlan) -> str:
    """A long video's chunks on one bar of its frames: each chunk's span, the overlap it opens on
    (hatched: the previous chunk's own frames, not generated again) and the frames it gives."""
    total = plan.num_frames
    rows = []
    for chunk in plan.chunks:
        first, last = chunk.frames
        start = chunk.first_frame if chunk.index else 0
        # The overlap: the previous chunk's latents this chunk opens on, as the long video's frames.
        overlap = (pixel_frames_of_latent(chunk.start)[0], first - 1) if chunk.index else None
        bars = ""
        if overlap is not None:
            left, width = 100 * overlap[0] / total, 100 * (overlap[1] - overlap[0] + 1) / total
            bars += (
                f'<div title="overlap: frames {overlap[0]}–{overlap[1]}, from chunk {chunk.index}" '
                f'style="position: absolute; left: {left:.2f}%; width: {width:.2f}%; top: 0; bottom: 0; '
                f"border-radius: 3px; background: repeating-linear-gradient(45deg, rgba({_ACCENT}, 0.75) 0 3px, "
                f'rgba({_ACCENT}, 0.25) 3px 6px);"></div>'
            )
        left, width = 100 * first / total, 100 * (last - first + 1) / total
        bars += (
            f'<div title="generated: frames {first}–{last}" style="position: absolute; left: {left:.2f}%; '
            f"width: {width:.2f}%; top: 0; bottom: 0; border-radius: 3px; border: 1px dashed "
            'rgba(127, 127, 127, 0.7); background: rgba(127, 127, 127, 0.15);"></div>'
        )
        label = f"chunk {chunk.index + 1}: frames {first}–{last}" + (
            f", opens on {start}–{first - 1}" if chunk.index else ""
        )
        rows.append(
            f'<div class="pusa-long-chunk" data-chunk="{chunk.index}" style="display: grid; '
            'grid-template-columns: 15em 1fr; gap: 6px; align-items: center; margin: 2px 0;">'
            f'<span style="font-size: 11px; font-variant-numeric: tabular-nums;">{escape(label)}</span>'
            f'<div style="position: relative; height: 14px;">{bars}</div></div>'
        )
    return (
        f'<div class="pusa-long-timeline" style="{_BOX}">'
        f'<div style="margin-bottom: 4px;">{escape(plan.note())} Hatched: the overlap a chunk opens on '
        "(the chunk before's own frames, kept); dashed: the frames it generates.</div>"
        + "".join(rows)
        + "</div>"
    )
