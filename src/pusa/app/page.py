"""The studio's page: its layout (the four task tabs, History, the queue panel, the status line), the wiring
of every event to `Studio`'s handlers, and `build_app`, which `app.serve` calls. The widgets come from the
parameter declarations (`app.widgets`); what the handlers do is in `app.studio`; serving the page is
`app.launch`'s (`launch_app`, also importable from here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from .. import recipes
from ..experts import ALL, LORA_TARGETS
from ..lora_specs import STRENGTH_MAX, STRENGTH_MIN
from ..params import PARAMS, RECIPES, label_of
from ..request import ModelDefaults, ModelLimits
from ..serving.queue import READY, JobQueue
from . import form_fields, views, widgets
from .events import api_endpoint, ui_handler
from .gradio_cache import CACHE
from .launch import launch_app
from .studio import GENERATE_LABEL, NOISE_MULTIPLIER, WAITING_LABEL, Studio, TabWidgets
from .uploads import DEFAULT_LIMITS, UploadLimits


class StudioPage(Studio):
    """`Studio` with its page: `build()` lays the widgets out and wires them to the handlers."""

    # ================================================================== layout
    def _generation_sliders(self, tab: TabWidgets) -> None:
        tab.fields["lora_alpha"] = widgets.slider(
            "lora_alpha", self.defaults, elem_id=f"{tab.tab}-lora-alpha"
        )
        tab.fields["steps"] = widgets.slider("num_inference_steps", self.defaults, elem_id=f"{tab.tab}-steps")
        tab.fields["preset"] = widgets.choice("preset", self.defaults, elem_id=f"{tab.tab}-preset")

    def _tail(self, tab: TabWidgets) -> None:
        d, limits = self.defaults, self.model_limits
        self._lora_panel(tab)
        with gr.Accordion("Negative prompt", open=False):
            tab.fields["negative_prompt"] = widgets.textbox("negative_prompt", d, lines=3, show_label=False)
        tab.fields["seed"] = widgets.number(
            "seed", d, value=-1, info="-1 = random; the seed used is shown with the result"
        )
        with gr.Accordion("Advanced", open=False):
            tab.fields["cfg"] = widgets.slider("cfg", d)
            with gr.Row():
                tab.fields["width"] = widgets.number("width", d, limits)
                tab.fields["height"] = widgets.number("height", d, limits)
            with gr.Row():
                tab.fields["num_frames"] = widgets.number("num_frames", d, limits)
                tab.fields["fps"] = widgets.number("fps", d)
            tab.fields["shift"] = widgets.slider("shift", d)
            experts = limits.experts if limits else 1  # a one-expert model has no boundary to set
            tab.fields["boundary"] = widgets.slider("boundary", d, visible=experts > 1)
            with gr.Row():
                tab.fields["cache"] = widgets.choice("cache", d, elem_id=f"{tab.tab}-cache")
                tab.fields["cache_threshold"] = widgets.slider("cache_threshold", d)

    def _lora_panel(self, tab: TabWidgets) -> None:
        """The LoRA panel: `form_fields.LORA_ROWS` rows of file, strength and expert (the expert for two-expert
        models only), then a text field for more entries in the CLI's syntax (the API's `loras`). The rows
        are their own fields (`lora_file_N`, `lora_strength_N`, `lora_expert_N`, the API's too); they go
        last in the tab's fields (`build`), so the API's earlier parameters keep their order."""
        d, experts = self.defaults, self.model_limits.experts if self.model_limits else 1
        files = [(Path(path).name, path) for path in self.lora_files]
        own = ", ".join(Path(p).name for p in self.own_loras) or "none known"
        with gr.Accordion("LoRAs", open=False, elem_id=f"{tab.tab}-lora-panel"):
            gr.Markdown(
                f"A file on the server (pick one or type its path); Strength {STRENGTH_MIN:g}..{STRENGTH_MAX:g}, "
                "blank = LoRA Alpha" + ("; Expert: the DiT it goes on" if experts > 1 else "")
                + f". Rows and text all empty: the model's own LoRAs ({own}).",
            )  # fmt: skip
            for row in range(1, form_fields.LORA_ROWS + 1):
                file_key, strength_key, expert_key = form_fields.lora_row_keys(row)
                with gr.Row(equal_height=True, elem_classes="pusa-compact"):
                    tab.lora_rows[file_key] = widgets.DropdownInput(
                        choices=files, value=None, allow_custom_value=True, filterable=True, label=f"LoRA {row}",
                        scale=5, elem_id=f"{tab.tab}-lora-{row}-file",
                    )  # fmt: skip
                    # text, not a number box: an emptied number box reaches the server as 0, and blank here
                    # means LoRA Alpha
                    tab.lora_rows[strength_key] = gr.Textbox(
                        value="", label="Strength", placeholder="LoRA Alpha", max_lines=1, scale=1, min_width=90,
                        elem_id=f"{tab.tab}-lora-{row}-strength",
                    )  # fmt: skip
                    tab.lora_rows[expert_key] = widgets.RadioInput(
                        list(LORA_TARGETS), value=ALL, label="Expert", scale=2, visible=experts > 1,
                        elem_id=f"{tab.tab}-lora-{row}-expert",
                    )  # fmt: skip
            tab.fields["loras"] = widgets.textbox(
                "loras", d, lines=2, elem_id=f"{tab.tab}-loras", label="More LoRAs (as text)",
                placeholder="/models/lightx2v_4step.safetensors:1.0\n/models/high_noise_pusa.safetensors:1.5@high",
                info="after the rows, one LoRA a line: FILE[:STRENGTH][@high|@low]; STRENGTH A;B = high;low of a "
                "two-expert model",
            )  # fmt: skip
            clear = gr.Button("Clear LoRAs", size="sm", elem_id=f"{tab.tab}-lora-clear")
        cleared = [form_fields.lora_row_blank(key) for key in tab.lora_rows]
        clear.click(
            lambda: (*cleared, ""), None, [*tab.lora_rows.values(), tab.fields["loras"]],
            queue=False, show_progress="hidden", api_visibility="private",
        )  # fmt: skip

    def _long_controls(self, tab: TabWidgets) -> None:
        """The Long video controls (Text-, Image- and Video-to-Video): a total above 0 chains clips of the
        tab's Frames into one video; the chunks and overlaps are drawn under them."""
        d = self.defaults
        with gr.Accordion("Long video", open=False, elem_id=f"{tab.tab}-long"):
            with gr.Row():
                tab.fields["long_frames"] = widgets.number("long_frames", d, elem_id=f"{tab.tab}-long-frames")
                tab.fields["context_latents"] = widgets.slider(
                    "context_latents", d, elem_id=f"{tab.tab}-long-overlap"
                )
            tab.fields["chain"] = widgets.RadioInput(
                list(PARAMS["chain"].choices), value=PARAMS["chain"].default, label=PARAMS["chain"].label,
                info=PARAMS["chain"].help, elem_id=f"{tab.tab}-long-chain",
            )  # fmt: skip
            long_timeline = gr.HTML("", elem_id=f"{tab.tab}-long-timeline")
        keys = ["long_frames", "context_latents", "chain", "num_frames"]
        inputs = [tab.fields[key] for key in keys]
        gr.on(
            [component.change for component in inputs], self.preview_long, inputs, long_timeline,
            queue=False, show_progress="hidden", trigger_mode="always_last", api_visibility="private",
        )  # fmt: skip

    def _outputs(self, tab: TabWidgets) -> None:
        ready = self.initial_state == READY
        with gr.Row():
            tab.generate = gr.Button(
                GENERATE_LABEL if ready else WAITING_LABEL, variant="primary", interactive=ready, scale=3,
                elem_id=f"{tab.tab}-generate",
            )  # fmt: skip
            tab.cancel = gr.Button("Cancel", variant="secondary", scale=1, elem_id=f"{tab.tab}-cancel")
        tab.progress = gr.HTML(views.idle_html(), label="Status", elem_id=f"{tab.tab}-progress")
        tab.video = gr.Video(
            label="Video", interactive=False, autoplay=True, loop=True, height=340, elem_id=f"{tab.tab}-video"
        )
        with gr.Accordion("Settings of this video", open=False):
            tab.settings = gr.Code(
                language="json", label="Settings", max_lines=30, elem_id=f"{tab.tab}-settings"
            )
        tab.job = self.job_states[tab.tab]

    def _i2v_tab(self) -> TabWidgets:
        tab = TabWidgets("i2v")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                tab.fields["image"] = widgets.image_upload(
                    label="Image", sources=["upload", "clipboard"], height=260, elem_id="i2v-image"
                )
                tab.fields["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="i2v-prompt")
                tab.fields["noise_multiplier"] = widgets.slider("noise_multiplier", self.defaults)
                self._generation_sliders(tab)
                first = self.preview_i2v(None, NOISE_MULTIPLIER, self.defaults.num_frames)
                tab.timeline = gr.HTML(first, elem_id="i2v-timeline")
                self._tail(tab)
                self._long_controls(tab)
            with gr.Column(scale=4):
                self._outputs(tab)
        self._timeline(tab, self.preview_i2v, ["image", "noise_multiplier", "num_frames"])
        self._check_uploads(tab)
        return tab

    def _frames_tab(self) -> TabWidgets:
        tab = TabWidgets("frames")
        last = self.defaults_num_latent - 1
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                tab.fields["images"] = gr.File(
                    file_count="multiple", file_types=["image"], label="Images (two or more, in order)",
                    elem_id="frames-images",
                )  # fmt: skip
                tab.fields["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="frames-prompt")
                with gr.Row():
                    tab.fields["positions"] = gr.Textbox(
                        value=f"0,{last}", label="Conditioning Positions", elem_id="frames-positions",
                        info=f"latent frame of each image, comma-separated (0..{last} here)",
                    )  # fmt: skip
                    tab.fields["noise_multipliers"] = gr.Textbox(
                        value=form_fields.format_list(recipes.keyframe_multipliers(2)), label="Noise Multipliers",
                        elem_id="frames-multipliers", info="one per image, 0.0-1.0, comma-separated",
                    )  # fmt: skip
                first = self.preview_frames([], f"0,{last}", tab.fields["noise_multipliers"].value, None)
                tab.timeline = gr.HTML(first, elem_id="frames-timeline")
                self._generation_sliders(tab)
                self._tail(tab)
            with gr.Column(scale=4):
                self._outputs(tab)
        self._timeline(tab, self.preview_frames, ["images", "positions", "noise_multipliers", "num_frames"])
        self._check_uploads(tab)
        return tab

    def _v2v_tab(self) -> TabWidgets:
        tab = TabWidgets("v2v")
        positions, multipliers = form_fields.recipe_fields("extension", self.defaults.num_frames)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                tab.fields["video"] = gr.Video(
                    label=label_of("video"), sources=["upload"], elem_id="v2v-video"
                )
                tab.fields["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="v2v-prompt")
                gr.Markdown("**Recipes** fill in the positions and multipliers below:")
                with gr.Row():
                    recipe_buttons = {
                        name: gr.Button(name.capitalize(), size="sm", elem_id=f"v2v-recipe-{name}")
                        for name in RECIPES
                    }
                tab.fields["positions"] = gr.Textbox(
                    value=positions, label="Conditioning Positions", elem_id="v2v-positions",
                    info="required: latent frames of the source to keep, e.g. 0,1,2,3",
                )  # fmt: skip
                tab.fields["noise_multipliers"] = gr.Textbox(
                    value=multipliers, label="Noise Multipliers", elem_id="v2v-multipliers",
                    info="one per position, 0.0-1.0 (lower = closer to the source frame)",
                )  # fmt: skip
                # It opens on the extension recipe, whose numbers fill the fields: what Generate will do.
                tab.fields["recipe"] = widgets.RadioInput(
                    list(form_fields.FORM_RECIPES), value="extension", label="Recipe", elem_id="v2v-recipe",
                    info="custom: keep the source's frames at the positions; the buttons above fill in a recipe",
                )  # fmt: skip
                with gr.Row(visible=False) as self.end_video_row:
                    tab.fields["end_video"] = gr.Video(
                        label=f"{label_of('end_video')} (transition target)",
                        sources=["upload"],
                        elem_id="v2v-end-video",
                    )
                tab.timeline = gr.HTML(
                    self.preview_v2v(positions, multipliers, "extension", None), elem_id="v2v-timeline"
                )
                self._generation_sliders(tab)
                self._tail(tab)
                self._long_controls(tab)
            with gr.Column(scale=4):
                self._outputs(tab)
        f = tab.fields
        # A recipe button, or the user picking a recipe, fills in its fields. Not `.change`: "Use these
        # settings" sets the recipe too, and must keep the positions it brings.
        fill = dict(
            outputs=[f["recipe"], f["positions"], f["noise_multipliers"], self.end_video_row],
            queue=False, show_progress="hidden", api_visibility="private",
        )  # fmt: skip
        for name, button in recipe_buttons.items():
            button.click(functools.partial(self.fill_recipe, name), f["num_frames"], **fill)
        f["recipe"].input(self.fill_recipe, [f["recipe"], f["num_frames"]], **fill)
        # A recipe's positions depend on the frame count: typing a new one refills them (`.input`: the
        # user's edits only, so "Use these settings" keeps the values it brings).
        f["num_frames"].input(self.fill_recipe, [f["recipe"], f["num_frames"]], **fill)
        self._timeline(tab, self.preview_v2v, ["positions", "noise_multipliers", "recipe", "num_frames"])
        self._check_uploads(tab)
        return tab

    def _check_uploads(self, tab: TabWidgets) -> None:
        for key in ("image", "images", "video", "end_video"):
            if key in tab.fields:
                tab.fields[key].upload(
                    functools.partial(self.check_upload, key), tab.fields[key], tab.progress,
                    queue=False, show_progress="hidden", api_visibility="private",
                )  # fmt: skip

    def _t2v_tab(self) -> TabWidgets:
        tab = TabWidgets("t2v")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                tab.fields["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="t2v-prompt")
                self._generation_sliders(tab)
                self._tail(tab)
                self._long_controls(tab)
            with gr.Column(scale=4):
                self._outputs(tab)
        return tab

    @staticmethod
    def _timeline(tab: TabWidgets, fn: Callable, keys: list[str]) -> None:
        """Redraw the tab's timeline whenever one of its inputs changes (typing included)."""
        inputs = [tab.fields[key] for key in keys]
        gr.on(
            [component.change for component in inputs], fn, inputs, tab.timeline,
            queue=False, show_progress="hidden", trigger_mode="always_last", api_visibility="private",
        )  # fmt: skip

    def _history_tab(self) -> None:
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0, elem_id="history-refresh")
            picker = gr.Dropdown(label="Video", choices=[], scale=5, elem_id="history-picker")
        table = gr.Dataframe(
            headers=views.HISTORY_HEADERS, value=[], interactive=False, wrap=True, max_height=320,
            elem_id="history-table", label="Finished videos (newest first); click a row to open it",
        )  # fmt: skip
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                video = gr.Video(
                    label="Video", interactive=False, loop=True, height=340, elem_id="history-video"
                )
                summary = gr.HTML()
                with gr.Row():
                    use = gr.Button(
                        "Use these settings", variant="primary", interactive=False, elem_id="history-use"
                    )
                    download = gr.DownloadButton(
                        "Download mp4", interactive=False, elem_id="history-download"
                    )
                    delete = gr.Button("Delete", variant="stop", interactive=False, elem_id="history-delete")
            with gr.Column(scale=5):
                settings = gr.Code(
                    language="json",
                    max_lines=30,
                    label="Settings (as in the mp4's metadata and its .json sidecar)",
                )
        with gr.Accordion("Failed jobs (no video; their inputs are kept)", open=False):
            failed = gr.HTML(views.failures_html([]), elem_id="history-failed")
        private = dict(api_visibility="private", show_progress="hidden")
        refresh_event = dict(fn=self.history_refresh, inputs=picker, outputs=[table, picker], **private)
        failed_event = dict(fn=self.failures_refresh, inputs=None, outputs=failed, **private)
        for event in (refresh_event, failed_event):
            refresh.click(**event)
            self.history_tab.select(**event)
            self.demo.load(**event)
            for tab in self.tabs.values():
                tab.generate_event.then(**event)
            # Also when any job ends well (one from another page, the API, or from before a restart).
            self.videos_made.change(**event)
        table.select(self.history_pick, None, picker, **private)
        picker.change(self.history_show, picker, [video, settings, summary, download, use, delete], **private)
        refill = [self.tab_switch, self.end_video_row] + [c for tab in self.tabs.values() for c in tab.inputs]
        use.click(self.history_use, picker, refill, **private)
        # Asked in the browser first; a refusal sends no id, and nothing is deleted.
        confirm = (
            "(entry) => confirm('Delete this video, its settings and its unused inputs?') ? entry : null"
        )
        delete.click(self.history_delete, picker, [table, picker], js=confirm, **private)

    def _queue_panel(self) -> tuple:
        """Every unfinished job, whichever page or client submitted it (so a reloaded page can cancel)."""
        with gr.Accordion(views.queue_label([]), open=False, elem_id="pusa-queue") as box:
            table = gr.Dataframe(
                headers=views.QUEUE_HEADERS, value=[], interactive=False, wrap=True, max_height=240,
                elem_id="queue-table", label="Unfinished jobs: the running one, then the waiting ones in order",
            )  # fmt: skip
            with gr.Row(equal_height=True):
                pick = gr.Dropdown(label="Job", choices=[], scale=5, elem_id="queue-picker")
                cancel = gr.Button("Cancel job", variant="stop", scale=1, elem_id="queue-cancel")
            outcome = gr.HTML(elem_id="queue-outcome")
        private = dict(api_visibility="private", show_progress="hidden")
        table.select(self.history_pick, None, pick, **private)
        cancel.click(self.queue_cancel, pick, outcome, queue=False, **private)
        # For gradio_client: list the unfinished jobs, look one up by id (also after a restart), cancel one.
        gr.Button(visible=False).click(self.jobs, None, gr.JSON(visible=False), api_name="jobs", queue=False)
        job_id = gr.Textbox(visible=False, label="job_id")
        gr.Button(visible=False).click(
            self.job_status, job_id, gr.JSON(visible=False), api_name="job_status", queue=False
        )
        gr.Button(visible=False).click(
            self.cancel_job,
            job_id,
            gr.Textbox(visible=False, label="state"),
            api_name="cancel_job",
            queue=False,
        )
        return box, table, pick

    @property
    def defaults_num_latent(self) -> int:
        return recipes.num_latent_frames(self.defaults.num_frames)

    def build(self, cache: tuple[int, int] = CACHE) -> gr.Blocks:
        """The page. cache: (how often, how old) in seconds: gradio keeps a copy of every video it sends
        and every upload in its temporary folder; copies older than that are deleted (and all of them
        when the server starts), so the folder stops growing by one file per video."""
        # One reading of the model's state for the whole page: it may change while the page is built.
        self.initial_state = self.queue.status.state
        with gr.Blocks(title="Pusa Studio", delete_cache=cache) as self.demo:
            with gr.Row(elem_classes="pusa-compact"):
                gr.Markdown(
                    "# Pusa Studio\nEvery frame gets its own noise level: image-to-video, start/end frames and "
                    "keyframes, video extension, completion and transitions, with one model.",
                    elem_id="pusa-title",
                )
            status = gr.HTML(
                views.status_html(self.queue.status, [], self.model_label), elem_id="pusa-status"
            )
            if self.exposed_host:
                gr.HTML(views.exposure_warning_html(self.exposed_host))
            queue_box, queue_table, queue_pick = self._queue_panel()
            # Each tab's last job id, kept by the browser (localStorage), so a reloaded page follows it
            # again. Made outside the tabs: a hidden tab's components load their stored values late.
            self.job_states = {
                name: gr.BrowserState(None, storage_key=f"pusa-{name}-job")
                for name in ("i2v", "frames", "v2v", "t2v")
            }
            with gr.Tabs() as self.tab_switch:
                with gr.Tab("Image-to-Video", id="i2v"):
                    self.tabs["i2v"] = self._i2v_tab()
                with gr.Tab("Multi-Frames to Video", id="frames"):
                    self.tabs["frames"] = self._frames_tab()
                with gr.Tab("Video-to-Video", id="v2v"):
                    self.tabs["v2v"] = self._v2v_tab()
                with gr.Tab("Text-to-Video", id="t2v"):
                    self.tabs["t2v"] = self._t2v_tab()
                with gr.Tab("History", id="history") as self.history_tab:
                    history_slot = gr.Column()
            for tab in self.tabs.values():  # the LoRA panel's rows: the last fields (API parameters)
                tab.fields.update(tab.lora_rows)
            methods = {name: self.endpoint(name) for name in self.tabs}
            for name, tab in self.tabs.items():
                outputs = [tab.video, tab.settings, tab.progress]
                follow = dict(
                    fn=ui_handler(self.follow), inputs=tab.job, outputs=[*outputs, tab.job],
                    concurrency_limit=None, show_progress="hidden", api_visibility="private",
                )  # fmt: skip
                tab.generate_event = tab.generate.click(
                    ui_handler(methods[name], until_queued=True), tab.inputs, [*outputs, tab.job],
                    concurrency_limit=None, show_progress="hidden", api_visibility="private",
                    api_name=f"ui_{methods[name].__name__}",
                ).then(**follow)  # fmt: skip
                tab.cancel.click(self.cancel, tab.job, tab.progress, api_visibility="private", queue=False)
                self.demo.load(**follow)
                # The endpoint for gradio_client: same inputs and code, errors raised instead of shown.
                endpoint = gr.Button(visible=False)
                endpoint.click(
                    api_endpoint(methods[name], self.queue), tab.inputs, outputs, api_name=methods[name].__name__,
                    concurrency_limit=None, show_progress="hidden",
                )  # fmt: skip
            self.videos_made = gr.State(self.queue.videos_made)
            with history_slot:
                self._history_tab()
            shown, queue_shown = gr.State(self.initial_state), gr.State(None)
            buttons = [tab.generate for tab in self.tabs.values()]
            tick = dict(
                fn=self.tick,
                inputs=[shown, queue_shown, queue_pick],
                outputs=[
                    status,
                    *buttons,
                    shown,
                    queue_box,
                    queue_table,
                    queue_pick,
                    queue_shown,
                    self.videos_made,
                ],
            )
            gr.Timer(1.0).tick(**tick, show_progress="hidden", api_visibility="private")
            self.demo.load(**tick, show_progress="hidden", api_visibility="private")
        return self.demo


def build_app(
    queue: JobQueue,
    defaults: ModelDefaults | ModelLimits,
    model_label: str = "tiny-random",
    limits: UploadLimits = DEFAULT_LIMITS,
    exposed_host: str | None = None,
    cache: tuple[int, int] = CACHE,
    lora_files: tuple[str, ...] = (),
    own_loras: tuple[str, ...] = (),
) -> gr.Blocks:
    """The studio page for a started `JobQueue` (its model may still be loading); `cache`: see `build`;
    `lora_files`: what the LoRA panel offers (`serve.lora_files`), `own_loras`: the model's own stack."""
    page = StudioPage(queue, defaults, model_label, limits, exposed_host, lora_files, own_loras)
    return page.build(cache)


# `launch_app` is `app.launch`'s; `app.serve` and the tests import it from here.
__all__ = ["StudioPage", "build_app", "launch_app"]
