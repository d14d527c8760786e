"""Serving the studio page: gradio's launch options (local-only, nothing sent off the machine), the page's
look (system fonts, CSS) and the script that keeps a typed out-of-range slider value. `app.serve` calls
`launch_app` with the page `app.page.build_app` made.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from ..serving.history import History
from .gradio_cache import CACHE, sweep_while_served
from .uploads import DEFAULT_LIMITS, UploadLimits

CSS = """
#pusa-title h1 { margin-bottom: 0; }
.pusa-compact { gap: 8px !important; }
input.pusa-out-of-range { outline: 2px solid var(--error-border-color, #ef4444); color: var(--error-text-color, #b91c1c); }
"""

# gradio's slider clamps a number typed into its box to the range when the box loses focus, so a typed
# 500 steps silently ran as 100. This stops that one blur handler (capture phase, before gradio's) for
# an out-of-range value: the box keeps what the user typed, says it is outside the range, and Generate
# sends it to our validation, which refuses it naming the field. Nothing is fetched; it runs on load.
SLIDER_JS = """
() => {
  const check = (box) => {
    const value = box.valueAsNumber, low = parseFloat(box.min), high = parseFloat(box.max);
    const outside = Number.isFinite(value) && (value < low || value > high);
    box.classList.toggle('pusa-out-of-range', outside);
    box.title = outside ? `${value} is outside ${low}..${high}: Generate will refuse it` : '';
    return outside;
  };
  const sliderBox = (target) => {  // the number box of a gradio slider, from its box or its range
    if (!(target instanceof HTMLInputElement)) return null;
    const wrap = target.closest('.wrap');
    if (!wrap?.querySelector('.slider_input_container')) return null;
    return wrap.querySelector('input[type=number]');
  };
  window.addEventListener('blur', (event) => {
    const box = sliderBox(event.target);
    if (box === event.target && check(box)) event.stopPropagation();
  }, true);
  window.addEventListener('input', (event) => {
    const box = sliderBox(event.target);
    if (box) setTimeout(() => check(box), 0);
  }, true);
}
"""


def theme() -> gr.themes.Base:
    """gradio's default look with system fonts: the page loads no web fonts at all."""
    return gr.themes.Default(
        primary_hue="blue",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def launch_app(
    demo: gr.Blocks,
    history: History,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    limits: UploadLimits = DEFAULT_LIMITS,
    block: bool = True,
    quiet: bool = False,
) -> Any:
    """Serve the page. Local-only by default; no share link, analytics, run history or monitoring."""
    demo.queue()
    every_s, age_s = demo.delete_cache or CACHE
    threading.Thread(
        target=sweep_while_served, args=(demo, every_s, age_s), daemon=True,
        name="pusa-cache-sweep",
    ).start()  # fmt: skip
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        auth_message="Pusa Studio: sign in with the user and password given to --auth / PUSA_AUTH.",
        share=False,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=quiet,
        # The page may show finished videos and their inputs; nothing else of the outputs folder.
        allowed_paths=[str(history.videos_dir), str(history.inputs_dir)],
        blocked_paths=[str(history.database)],
        max_file_size=f"{int(max(limits.image_mb, limits.video_mb))}mb",
        footer_links=["api", "settings"],
        run_history=False,
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        pwa=False,
        theme=theme(),
        css=CSS,
        js=SLIDER_JS,
    )
