"""The Pusa studio: a gradio page with the original demo's four tabs, over a server-side job queue.

Thin by design: widgets -> `forms` (check, build a `JobSpec`) -> `JobQueue` (one worker owning the
pipeline) -> progress streamed back. Each task has one named API endpoint (`/image_to_video`,
`/frames_to_video`, `/video_to_video`, `/text_to_video`) that gradio_client can call; it runs the same
code as the page's Generate button and returns (video path, settings as JSON text, status HTML), or
raises the page's error message.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Read by gradio when it starts; the studio must make no request that leaves the machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr
from PIL import Image

from .. import recipes
from ..params import DEFAULT_NEGATIVE_PROMPT, PARAMS, RECIPES
from ..request import ModelDefaults, ModelLimits
from ..serving.history import History
from ..serving.queue import CANCELLED, DONE, FAILED, LOADING, READY, JobQueue, JobView
from . import forms, views, widgets
from .forms import DEFAULT_LIMITS, CommonForm, FormError, UploadLimits
from .timeline import error_html, timeline_html

CFG, SHIFT, NOISE_MULTIPLIER = (PARAMS[name].default for name in ("cfg", "shift", "noise_multiplier"))

GENERATE_LABEL = "Generate"
WAITING_LABEL = "Generate (loading model...)"
CSS = """
#pusa-title h1 { margin-bottom: 0; }
.pusa-compact { gap: 8px !important; }
"""


@dataclass
class Update:
    """One step of a generation stream; `None` video/settings mean "leave as they are"."""

    progress: str | None  # None: leave as it is
    video: str | None = None
    settings: str | None = None  # JSON text: a dict would reach gradio_client with its paths rewritten
    job_id: str | None = None
    error: str | None = None
    clear: bool = False  # empty the video and settings (a new job started)


@dataclass
class TabWidgets:
    """The components of one task tab. `fields` maps form keys to input components, in API order."""

    tab: str
    fields: dict[str, Any] = field(default_factory=dict)
    generate: Any = None
    cancel: Any = None
    progress: Any = None
    video: Any = None
    settings: Any = None
    job: Any = None
    timeline: Any = None
    generate_event: Any = None

    @property
    def inputs(self) -> list:
        return list(self.fields.values())


@functools.lru_cache(maxsize=256)
def _thumbnail_cached(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def settings_text(settings: dict) -> str:
    return json.dumps(settings, indent=2, sort_keys=True)


def thumbnail(path: Any, size: int = 96) -> str | None:
    """A small `data:` URI of an image file (the timeline embeds it; nothing is fetched)."""
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    return _thumbnail_cached(str(path), Path(path).stat().st_mtime_ns, size)


def _api(stream_method: Callable[..., Iterator[Update]]) -> Callable:
    """A named endpoint: streams (video, settings, status); a failure raises the page's message.

    A client that cancels (gradio_client's `job.cancel()`) makes gradio close this stream: the job
    is cancelled with it, so nobody is left waiting behind a video that nobody will fetch.
    """
    queue: JobQueue = stream_method.__self__.queue

    @functools.wraps(stream_method)
    def endpoint(*args, **kwargs):
        job_id = None
        try:
            for update in stream_method(*args, **kwargs):
                job_id = update.job_id or job_id
                if update.error is not None:
                    raise gr.Error(update.error, print_exception=False)
                yield (
                    update.video if update.video is not None else gr.skip(),
                    update.settings if update.settings is not None else gr.skip(),
                    update.progress,
                )
        except GeneratorExit:
            if job_id is not None:
                queue.cancel(job_id)
            raise

    return endpoint


def _ui(stream_method: Callable[..., Iterator[Update]], until_queued: bool = False) -> Callable:
    """The Generate button: like the endpoint, but errors stay in the page and the job id is kept.

    until_queued: stop once the job is queued (or refused). The browser stores an event's last job id
    when the event ends, so the button's event ends there and `Studio.follow` streams the rest: a page
    reloaded meanwhile finds its job again.
    """

    @functools.wraps(stream_method)
    def handler(*args, **kwargs):
        for update in stream_method(*args, **kwargs):
            video = None if update.clear else (update.video if update.video is not None else gr.skip())
            settings = (
                None if update.clear else (update.settings if update.settings is not None else gr.skip())
            )
            progress = update.progress if update.progress is not None else gr.skip()
            yield video, settings, progress, update.job_id
            if until_queued and (update.job_id is not None or update.error is not None):
                return

    return handler


class Studio:
    """Builds the page and answers its events. The queue, history and limits are passed in."""

    def __init__(
        self,
        queue: JobQueue,
        defaults: ModelDefaults | ModelLimits,
        model_label: str,
        limits: UploadLimits = DEFAULT_LIMITS,
        exposed_host: str | None = None,
    ) -> None:
        self.queue = queue
        self.history: History = queue.history
        # The model's limits (known from its config files before the weights load) bound the fields.
        self.model_limits = defaults if isinstance(defaults, ModelLimits) else None
        self.defaults = defaults.defaults if isinstance(defaults, ModelLimits) else defaults
        self.model_label = model_label
        self.limits = limits
        self.exposed_host = exposed_host  # set when listening beyond this machine without a password
        self.tabs: dict[str, TabWidgets] = {}
        self.initial_state = LOADING  # the model's state when the page was built

    # ================================================================== generation
    def _stream(self, build: Callable[[], Any]) -> Iterator[Update]:
        """Wait for the model, check the form, queue the job and follow it to its end."""
        status = self.queue.status
        while status.state == LOADING:
            yield Update(views.waiting_for_model_html())
            status = self.queue.wait_ready(timeout=1.0)
        if status.state == FAILED:
            message = f"the model failed to load: {status.message}"
            yield Update(error_html(message), error=message)
            return
        try:
            spec = build()
            forms.check_spec(self.queue.pipeline.limits, spec)
            view = self.queue.submit(spec)
        except (ValueError, RuntimeError, OSError) as error:
            yield Update(error_html(str(error)), error=str(error))
            return
        yield Update(views.progress_html(view), job_id=view.id, clear=True)
        yield from self._follow(view)

    def follow(self, job_id: str | None) -> Iterator[Update]:
        """A reloaded page: show the tab's last job (kept by the browser) again, following it if it runs."""
        view = self.queue.view(job_id) if isinstance(job_id, str) and job_id else None
        if view is None:  # none yet, refused (its error stays shown), or forgotten by a restart
            yield Update(None, job_id=None)
            return
        yield Update(views.progress_html(view), job_id=view.id)
        yield from self._follow(view)

    def _follow(self, view: JobView) -> Iterator[Update]:
        while not view.done:
            # The timeout refreshes the ETA between steps.
            view = self.queue.wait(view.id, after_version=view.version, timeout=1.0)
            yield Update(views.progress_html(view), job_id=view.id)
        if view.state == DONE:
            entry = view.entry
            video = str(entry.video) if entry.video.is_file() else None  # None: deleted from History since
            yield Update(views.progress_html(view), video, settings_text(entry.settings), job_id=view.id)
        elif view.state == CANCELLED:
            yield Update(views.progress_html(view), job_id=view.id, error=f"the job was {view.phase}")
        else:
            yield Update(views.progress_html(view), job_id=view.id, error=f"the job failed: {view.error}")

    def _keep(self, path: str) -> str:
        return self.history.keep_input(path)

    def image_to_video(
        self,
        image: str | None,
        prompt: str = "",
        noise_multiplier: float = NOISE_MULTIPLIER,
        lora_alpha: float | None = None,
        steps: int | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: int = -1,
        cfg: float = CFG,
        width: int | None = None,
        height: int | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        shift: float = SHIFT,
    ) -> Iterator[Update]:
        """Image-to-Video: the image becomes the first frame, noised by `noise_multiplier` (0 keeps it exactly).
        `lora_alpha`, `steps`, `width`, `height`, `num_frames`, `fps` default to the model's; `seed` -1 is random."""
        common = CommonForm(
            prompt, negative_prompt, lora_alpha, steps, seed, cfg, width, height, num_frames, fps, shift
        )
        return self._stream(
            lambda: forms.image_to_video(
                image, noise_multiplier, common, self.defaults, self.limits, self._keep
            )
        )

    def frames_to_video(
        self,
        images: list[str] | None,
        prompt: str = "",
        positions: str = "",
        noise_multipliers: str = "",
        lora_alpha: float | None = None,
        steps: int | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: int = -1,
        cfg: float = CFG,
        width: int | None = None,
        height: int | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        shift: float = SHIFT,
    ) -> Iterator[Update]:
        """Multi-Frames to Video: image j is placed at latent frame positions[j] ("0,20": first and last of
        81 frames), noised by noise_multipliers[j]. Blank positions spread the images evenly."""
        common = CommonForm(
            prompt, negative_prompt, lora_alpha, steps, seed, cfg, width, height, num_frames, fps, shift
        )
        return self._stream(
            lambda: forms.frames_to_video(
                images, positions, noise_multipliers, common, self.defaults, self.limits, self._keep
            )
        )

    def video_to_video(
        self,
        video: str | None,
        prompt: str = "",
        positions: str = "",
        noise_multipliers: str = "",
        recipe: str = "extension",
        end_video: str | None = None,
        lora_alpha: float | None = None,
        steps: int | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: int = -1,
        cfg: float = CFG,
        width: int | None = None,
        height: int | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        shift: float = SHIFT,
    ) -> Iterator[Update]:
        """Video-to-Video: the source's latent frames at `positions` condition the new video. `recipe`
        "extension", "completion" or "transition" (with `end_video`) use those recipes' frames; with a recipe,
        blank `positions` / `noise_multipliers` take the recipe's own."""
        common = CommonForm(
            prompt, negative_prompt, lora_alpha, steps, seed, cfg, width, height, num_frames, fps, shift
        )
        return self._stream(
            lambda: forms.video_to_video(
                video,
                positions,
                noise_multipliers,
                recipe,
                end_video,
                common,
                self.defaults,
                self.limits,
                self._keep,
            )
        )

    def text_to_video(
        self,
        prompt: str,
        lora_alpha: float | None = None,
        steps: int | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        seed: int = -1,
        cfg: float = CFG,
        width: int | None = None,
        height: int | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        shift: float = SHIFT,
    ) -> Iterator[Update]:
        """Text-to-Video from the prompt alone."""
        common = CommonForm(
            prompt, negative_prompt, lora_alpha, steps, seed, cfg, width, height, num_frames, fps, shift
        )
        return self._stream(lambda: forms.text_to_video(common, self.defaults))

    def cancel(self, job_id: str | None) -> Any:
        if job_id and self.queue.cancel(job_id):
            view = self.queue.view(job_id)
            return views.progress_html(view) if view else gr.skip()
        return gr.skip()

    # ================================================================== the queue
    def jobs(self) -> list[dict]:
        """The unfinished jobs, the running one first: id, task, prompt, seed, state, step..."""
        return [views.job_record(view) for view in self.queue.active()]

    def cancel_job(self, job_id: str) -> str:
        """Cancel a waiting job, or a running one after its current step; returns its state then."""
        job_id = job_id.strip() if isinstance(job_id, str) else ""
        view = self.queue.view(job_id) if job_id else None
        if view is None:
            message = f"job_id={job_id!r} is not a job of this studio; /jobs lists the unfinished ones"
            raise gr.Error(message, print_exception=False)
        if not self.queue.cancel(job_id):
            raise gr.Error(f"job {job_id} has already ended ({view.state})", print_exception=False)
        return views.job_state_text(self.queue.view(job_id))

    def queue_cancel(self, job_id: str | None) -> str:
        """The queue's Cancel button: the outcome in words, in the page."""
        try:
            return views.cancelled_html(f"job {job_id}: {self.cancel_job(job_id or '')}")
        except gr.Error as error:
            return error_html(error.message)

    def queue_refresh(self, shown: str | None, picked: str | None) -> tuple:
        """The queue panel, changed only when its jobs or their states did (it is polled every second)."""
        active = self.queue.active()
        rows = views.queue_rows(active)
        signature = json.dumps(rows)
        if signature == shown:
            return gr.skip(), gr.skip(), gr.skip(), shown
        ids = [view.id for view in active]
        value = picked if picked in ids else (ids[0] if ids else None)
        choices = [views.queue_choice(view) for view in active]
        return (
            gr.update(label=views.queue_label(active)),
            gr.update(value=rows),
            gr.update(choices=choices, value=value),
            signature,
        )

    def check_upload(self, field: str, value: Any) -> str:
        """Feedback as soon as a file arrives: its type, size, duration and resolution, or what is wrong."""
        if not value:
            return views.idle_html()
        try:
            if field == "images":
                for path in value:
                    forms.check_image(path, field, self.limits)
                text = f"{len(value)} image{'s' if len(value) != 1 else ''}"
            elif field == "image":
                forms.check_image(value, field, self.limits)
                with Image.open(value) as image:
                    text = f"{Path(value).name}, {image.width}x{image.height}"
            else:
                info = forms.check_video(value, field, self.limits)
                text = (
                    f"{Path(value).name}: {info.frames} frames, {info.seconds:.1f} s at {info.fps:g} fps, "
                    f"{info.width}x{info.height}"
                )
        except FormError as error:
            return error_html(str(error))
        return views.uploaded_html(text)

    # ================================================================== timelines
    def _frames_count(self, num_frames: Any) -> int:
        return forms.check_num_frames(num_frames, self.defaults)

    def preview_i2v(self, image: Any, noise_multiplier: Any, num_frames: Any) -> str:
        try:
            count = self._frames_count(num_frames)
            multiplier = float(noise_multiplier)
        except (FormError, TypeError, ValueError) as error:
            return error_html(str(error))
        return timeline_html(count, [0], [multiplier], [thumbnail(image)], ["the image"])

    def preview_frames(self, images: Any, positions: str, noise_multipliers: str, num_frames: Any) -> str:
        images = list(images or [])
        try:
            count = self._frames_count(num_frames)
            latent, multipliers = forms.frames_conditioning(positions, noise_multipliers, len(images), count)
        except FormError as error:
            return error_html(str(error))
        thumbnails = [thumbnail(image) for image in images]
        sources = [f"image {j + 1}" for j in range(len(latent))]
        note = "" if images else "Upload two or more images: image j goes to the j-th position."
        return timeline_html(count, latent, multipliers, thumbnails, sources, note)

    def preview_v2v(self, positions: str, noise_multipliers: str, recipe: str, num_frames: Any) -> str:
        """The timeline and, above it, what the recipe will do (`recipes.RecipePlan.note`)."""
        try:
            count = self._frames_count(num_frames)
            plan = forms.video_plan(positions, noise_multipliers, recipe, count)
        except FormError as error:
            return error_html(str(error))
        return timeline_html(count, plan.positions, plan.noise_multipliers, (), plan.sources, plan.note())

    def fill_recipe(self, recipe: str, num_frames: Any) -> tuple:
        """(recipe, positions, multipliers, second clip's visibility) for a chosen recipe."""
        try:
            fields = forms.recipe_fields(recipe, self._frames_count(num_frames))
        except FormError:
            fields = None
        second_clip = gr.update(visible=recipe == "transition")
        if fields is None:  # custom, or frames that are not 4k+1 (the timeline says so)
            return recipe, gr.skip(), gr.skip(), second_clip
        return recipe, fields[0], fields[1], second_clip

    # ================================================================== status line
    def tick(self, shown: str | None, queue_shown: str | None = None, picked: str | None = None) -> tuple:
        """Status line and queue every second; the Generate buttons change only when the model's state does."""
        status = self.queue.status
        line = views.status_html(status, self.queue.active(), self.model_label)
        if status.state == shown:
            buttons = [gr.skip() for _ in self.tabs]
        else:
            ready = status.state == READY
            label = GENERATE_LABEL if ready else WAITING_LABEL
            # One update object per button: gradio consumes them as it applies them.
            buttons = [gr.update(interactive=ready, value=label) for _ in self.tabs]
        return (
            line,
            *buttons,
            status.state,
            *self.queue_refresh(queue_shown, picked),
            self.queue.videos_made,
        )

    # ================================================================== history
    def history_refresh(self, selected: str | None) -> tuple:
        entries = self.history.list()
        choices = [views.history_choice(entry) for entry in entries]
        ids = {entry.id for entry in entries}
        value = selected if selected in ids else (entries[0].id if entries else None)
        rows = views.history_rows(entries)
        return gr.update(value=rows), gr.update(choices=choices, value=value)

    def history_pick(self, event: gr.SelectData) -> Any:
        row = event.row_value or []
        return row[0] if row else gr.skip()

    def history_show(self, entry_id: str | None) -> tuple:
        entry = self.history.get(entry_id) if entry_id else None
        if entry is None:
            use, delete = gr.update(interactive=False), gr.update(interactive=False)
            return None, None, "", gr.update(value=None, interactive=False), use, delete
        video = str(entry.video) if entry.video.is_file() else None
        download = gr.update(value=video, interactive=video is not None)
        use, delete = gr.update(interactive=True), gr.update(interactive=True)
        return video, settings_text(entry.settings), views.history_summary_html(entry), download, use, delete

    def history_use(self, entry_id: str | None) -> dict:
        """Refill the entry's tab with its form values (seed included) and switch to it."""
        entry = self.history.get(entry_id) if entry_id else None
        if entry is None or entry.form.get("tab") not in self.tabs:
            return {}
        widgets = self.tabs[entry.form["tab"]]
        updates: dict = {self.tab_switch: gr.Tabs(selected=widgets.tab)}
        for key, component in widgets.fields.items():
            if key in entry.form:
                value = entry.form[key]
                if key == "end_video" and value is None:
                    continue
                updates[component] = value
        if widgets.tab == "v2v":
            updates[self.end_video_row] = gr.update(visible=entry.form.get("recipe") == "transition")
        return updates

    def history_delete(self, entry_id: str | None) -> tuple:
        if entry_id:
            self.history.delete(entry_id)
        return self.history_refresh(None)

    # ================================================================== layout
    def _generation_sliders(self, tab: TabWidgets) -> None:
        tab.fields["lora_alpha"] = widgets.slider("lora_alpha", self.defaults)
        tab.fields["steps"] = widgets.slider("num_inference_steps", self.defaults)

    def _tail(self, tab: TabWidgets) -> None:
        d, limits = self.defaults, self.model_limits
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
                tab.fields["image"] = gr.Image(
                    type="filepath", label="Image", sources=["upload", "clipboard"], height=260,
                    elem_id="i2v-image",
                )  # fmt: skip
                tab.fields["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="i2v-prompt")
                tab.fields["noise_multiplier"] = widgets.slider("noise_multiplier", self.defaults)
                self._generation_sliders(tab)
                first = self.preview_i2v(None, NOISE_MULTIPLIER, self.defaults.num_frames)
                tab.timeline = gr.HTML(first, elem_id="i2v-timeline")
                self._tail(tab)
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
                        value=forms.format_list(recipes.keyframe_multipliers(2)), label="Noise Multipliers",
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
        positions, multipliers = forms.recipe_fields("extension", self.defaults.num_frames)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                tab.fields["video"] = gr.Video(label="Source video", sources=["upload"], elem_id="v2v-video")
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
                tab.fields["recipe"] = gr.Radio(
                    list(forms.FORM_RECIPES), value="extension", label="Recipe", elem_id="v2v-recipe",
                    info="custom: keep the source's frames at the positions; the buttons above fill in a recipe",
                )  # fmt: skip
                with gr.Row(visible=False) as self.end_video_row:
                    tab.fields["end_video"] = gr.Video(
                        label="Second clip (transition target)", sources=["upload"], elem_id="v2v-end-video"
                    )
                tab.timeline = gr.HTML(
                    self.preview_v2v(positions, multipliers, "extension", None), elem_id="v2v-timeline"
                )
                self._generation_sliders(tab)
                self._tail(tab)
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
        private = dict(api_visibility="private", show_progress="hidden")
        refresh_event = dict(fn=self.history_refresh, inputs=picker, outputs=[table, picker], **private)
        refresh.click(**refresh_event)
        self.history_tab.select(**refresh_event)
        self.demo.load(**refresh_event)
        for tab in self.tabs.values():
            tab.generate_event.then(**refresh_event)
        # Also when any job ends well (one from another page, the API, or from before a restart).
        self.videos_made.change(**refresh_event)
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
        # For gradio_client: list the unfinished jobs, cancel one by id.
        gr.Button(visible=False).click(self.jobs, None, gr.JSON(visible=False), api_name="jobs", queue=False)
        job_id = gr.Textbox(visible=False, label="job_id")
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

    def build(self) -> gr.Blocks:
        # One reading of the model's state for the whole page: it may change while the page is built.
        self.initial_state = self.queue.status.state
        with gr.Blocks(title="Pusa Studio") as self.demo:
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
            methods = {
                "i2v": self.image_to_video,
                "frames": self.frames_to_video,
                "v2v": self.video_to_video,
                "t2v": self.text_to_video,
            }
            for name, tab in self.tabs.items():
                outputs = [tab.video, tab.settings, tab.progress]
                follow = dict(
                    fn=_ui(self.follow), inputs=tab.job, outputs=[*outputs, tab.job],
                    concurrency_limit=None, show_progress="hidden", api_visibility="private",
                )  # fmt: skip
                tab.generate_event = tab.generate.click(
                    _ui(methods[name], until_queued=True), tab.inputs, [*outputs, tab.job],
                    concurrency_limit=None, show_progress="hidden", api_visibility="private",
                    api_name=f"ui_{methods[name].__name__}",
                ).then(**follow)  # fmt: skip
                tab.cancel.click(self.cancel, tab.job, tab.progress, api_visibility="private", queue=False)
                self.demo.load(**follow)
                # The endpoint for gradio_client: same inputs and code, errors raised instead of shown.
                endpoint = gr.Button(visible=False)
                endpoint.click(
                    _api(methods[name]), tab.inputs, outputs, api_name=methods[name].__name__,
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
) -> gr.Blocks:
    """The studio page for a started `JobQueue` (its model may still be loading)."""
    return Studio(queue, defaults, model_label, limits, exposed_host).build()


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
    )
