"""The Pusa studio's event handlers, over a server-side job queue (the page that wires them: `app.page`).

Thin by design: widgets -> `forms` (check, build a `JobSpec`) -> `JobQueue` (one worker owning the
pipeline) -> progress streamed back. Each task has one named API endpoint (`/image_to_video`,
`/frames_to_video`, `/video_to_video`, `/text_to_video`) that gradio_client can call; it runs the same
code as the page's Generate button and returns (video path, settings as JSON text, status text), or
raises the page's error message.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Read by gradio when it starts; the studio must make no request that leaves the machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr
from PIL import Image

from ..params import MODEL_OWN, PARAMS
from ..request import ModelDefaults, ModelLimits
from ..serving.history import History
from ..serving.queue import CANCELLED, DONE, FAILED, LOADING, READY, JobQueue, JobView
from . import form_fields, forms, long_form, uploads, views
from .events import Update, settings_text
from .form_fields import FormError
from .thumbnails import thumbnail
from .timeline import error_html, long_timeline_html, timeline_html
from .uploads import DEFAULT_LIMITS, UploadLimits

NOISE_MULTIPLIER = PARAMS["noise_multiplier"].default
API_NAMES = {
    "i2v": "image_to_video",
    "frames": "frames_to_video",
    "v2v": "video_to_video",
    "t2v": "text_to_video",
}
API_DOCS = {
    "i2v": "Image-to-Video: the image becomes the first frame, noised by `noise_multiplier` (0 keeps it "
    "exactly). Blank lora_alpha, steps, width, height, num_frames, fps take the model's own; seed -1 is random.",
    "frames": 'Multi-Frames to Video: image j is placed at latent frame positions[j] ("0,4": the first and '
    "last of 17 frames), noised by noise_multipliers[j]. Blank positions spread the images evenly.",
    "v2v": "Video-to-Video: the source's latent frames at `positions` condition the new video, or a `recipe` "
    '("extension", "completion", "transition" with `end_video`; "custom" for free positions); with a '
    "recipe, blank positions / noise_multipliers take the recipe's own.",
    "t2v": "Text-to-Video from the prompt alone.",
}
LONG_DOC = (
    " long_frames > 0 makes one video of that many frames (4k+1) instead, chained from clips of num_frames, "
    "each opening on the last context_latents latent frames of the one before (chain: latent, pixel or "
    "pixel-matched)."
)
API_DOCS.update({task: API_DOCS[task] + LONG_DOC for task in ("i2v", "v2v", "t2v")})
LORA_DOC = (
    " LoRAs: the panel's rows lora_file_N, lora_strength_N (blank: lora_alpha), lora_expert_N (all, high, low) "
    "for N = 1..4, then `loras`, text with one FILE[:STRENGTH][@high|@low] a line; none: the model's own."
)
API_DOCS.update({task: doc + LORA_DOC for task, doc in API_DOCS.items()})

GENERATE_LABEL = "Generate"
WAITING_LABEL = "Generate (loading model...)"


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
    lora_rows: dict[str, Any] = field(default_factory=dict)  # the LoRA panel's fields, by form key

    @property
    def inputs(self) -> list:
        return list(self.fields.values())


class Studio:
    """Builds the page and answers its events. The queue, history and limits are passed in."""

    def __init__(
        self,
        queue: JobQueue,
        defaults: ModelDefaults | ModelLimits,
        model_label: str,
        limits: UploadLimits = DEFAULT_LIMITS,
        exposed_host: str | None = None,
        lora_files: tuple[str, ...] = (),
        own_loras: tuple[str, ...] = (),
    ) -> None:
        self.queue = queue
        self.lora_files = tuple(lora_files)  # what the LoRA panel's file fields offer (any path may be typed)
        self.own_loras = tuple(own_loras)  # the model's own stack: what no LoRA at all means
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
    def _stream(self, build: Callable[[forms.Keep], Any]) -> Iterator[Update]:
        """Wait for the model, check the form, queue the job and follow it to its end.

        `build(keep)` makes the job; it is first made and checked with the uploads where they are, and only
        a request that passes is made again with them copied into the outputs folder: a refused request
        leaves no copy behind."""
        status = self.queue.status
        while status.state == LOADING:
            yield Update(views.waiting_for_model_html(), text="Waiting for the model: loading model...")
            status = self.queue.wait_ready(timeout=1.0)
        if status.state == FAILED:
            message = f"the model failed to load: {status.message}"
            yield Update(error_html(message), error=message)
            return
        try:
            forms.check_spec(self.queue.pipeline.limits, build(str))
            view = self.queue.submit(build(self._keep))
        except (ValueError, RuntimeError, OSError) as error:
            yield Update(error_html(str(error)), error=str(error))
            return
        yield Update(views.progress_html(view), job_id=view.id, clear=True, text=views.progress_text(view))
        yield from self._follow(view)

    def follow(self, job_id: str | None) -> Iterator[Update]:
        """A reloaded page: show the tab's last job (kept by the browser) again, following it if it runs."""
        view = self.queue.view(job_id) if isinstance(job_id, str) and job_id else None
        if view is None:  # none yet, refused (its error stays shown), or forgotten by a restart
            yield Update(None, job_id=None)
            return
        yield Update(views.progress_html(view), job_id=view.id, text=views.progress_text(view))
        yield from self._follow(view)

    def _follow(self, view: JobView) -> Iterator[Update]:
        while not view.done:
            # The timeout refreshes the ETA between steps.
            view = self.queue.wait(view.id, after_version=view.version, timeout=1.0)
            yield Update(views.progress_html(view), job_id=view.id, text=views.progress_text(view))
        text = views.progress_text(view)
        if view.state == DONE:
            entry = view.entry
            video = str(entry.video) if entry.video.is_file() else None  # None: deleted from History since
            yield Update(
                views.progress_html(view), video, settings_text(entry.settings), job_id=view.id, text=text
            )
        elif view.state == CANCELLED:
            yield Update(
                views.progress_html(view), job_id=view.id, error=f"the job was {view.phase}", text=text
            )
        else:
            yield Update(
                views.progress_html(view), job_id=view.id, error=f"the job failed: {view.error}", text=text
            )

    def _keep(self, path: str) -> str:
        return self.history.keep_input(path)

    def generate(self, task: str, values: Mapping[str, Any]) -> Iterator[Update]:
        """One tab's Generate, or its API endpoint: the form's values by their keys (`TabWidgets.fields`)."""
        keys = (
            *form_fields.COMMON_KEYS,
            *form_fields.LORA_KEYS,
        )  # the LoRA panel's rows compose into `loras`
        common = {key: values[key] for key in keys if key in values}
        d, limits = self.defaults, self.limits
        builders = {
            "i2v": lambda keep: forms.image_to_video(
                values.get("image"), values.get("noise_multiplier"), common, d, limits, keep
            ),
            "frames": lambda keep: forms.frames_to_video(
                values.get("images"), values.get("positions"), values.get("noise_multipliers"), common, d, limits,
                keep,
            ),
            "v2v": lambda keep: forms.video_to_video(
                values.get("video"), values.get("positions"), values.get("noise_multipliers"), values.get("recipe"),
                values.get("end_video"), common, d, limits, keep,
            ),
            "t2v": lambda keep: forms.text_to_video(common, d),
        }  # fmt: skip
        build = builders[task]
        if task in long_form.LONG_TABS:  # its Long video controls: the same inputs, chained to the total
            return self._stream(lambda keep: long_form.as_long(build(keep), values))
        return self._stream(build)

    def endpoint(self, task: str) -> Callable[..., Iterator[Update]]:
        """`generate(task, ...)` with one named parameter per field of the tab, in the page's order: what
        gradio shows as the endpoint's parameters (their defaults: the declarations')."""
        keys = list(self.tabs[task].fields)
        parameters = [
            inspect.Parameter(
                key, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if index == 0 else self._api_default(key),
            )
            for index, key in enumerate(keys)
        ]  # fmt: skip
        signature = inspect.Signature(parameters)

        def run(*args: Any, **kwargs: Any) -> Iterator[Update]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return self.generate(task, bound.arguments)

        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__name__ = run.__qualname__ = API_NAMES[task]
        run.__doc__ = API_DOCS[task]
        return run

    def _api_default(self, key: str) -> Any:
        if key == "seed":
            return -1
        if key == "recipe":
            return "extension"
        name = next((n for n, p in PARAMS.items() if p.key == key), key)
        param = PARAMS.get(name)
        if param is None or param.default is MODEL_OWN:
            return None
        if param.kind in ("ints", "floats"):
            return ""
        return param.default

    def cancel(self, job_id: str | None) -> Any:
        if job_id and self.queue.cancel(job_id):
            view = self.queue.view(job_id)
            return views.progress_html(view) if view else gr.skip()
        return gr.skip()

    # ================================================================== the queue
    def jobs(self) -> list[dict]:
        """The unfinished jobs, the running one first: id, task, prompt, seed, state, step..."""
        return [views.job_record(view) for view in self.queue.active()]

    def job_status(self, job_id: str) -> dict:
        """One job by id, whatever became of it: unfinished (as `/jobs` lists it), done (its video), or
        failed (why). A client whose stream broke when the server stopped asks this after the restart."""
        job_id = job_id.strip() if isinstance(job_id, str) else ""
        view = self.queue.view(job_id) if job_id else None
        if view is not None and view.state not in (DONE, FAILED):
            return views.job_record(view)
        entry = self.history.get(job_id) if job_id else None
        if entry is not None:
            return {"id": job_id, "state": DONE, "video": str(entry.video), "seed": entry.seed}
        failure = self.history.failure(job_id) if job_id else None
        if failure is not None:
            return {"id": job_id, "state": FAILED, "reason": failure.reason}
        if view is not None:
            return views.job_record(view)
        raise gr.Error(f"job_id={job_id!r} is not a job of this studio", print_exception=False)

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
                    uploads.check_image(path, field, self.limits)
                text = f"{len(value)} image{'s' if len(value) != 1 else ''}"
            elif field == "image":
                uploads.check_image(value, field, self.limits)
                with Image.open(value) as image:
                    text = f"{Path(value).name}, {image.width}x{image.height}"
            else:
                info = uploads.check_video(value, field, self.limits)
                text = (
                    f"{Path(value).name}: {info.frames} frames, {info.seconds:.1f} s at {info.fps:g} fps, "
                    f"{info.width}x{info.height}"
                )
        except FormError as error:
            return error_html(str(error))
        return views.uploaded_html(text)

    # ================================================================== timelines
    def _frames_count(self, num_frames: Any) -> int:
        return form_fields.check_num_frames(num_frames, self.defaults)

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

    def preview_long(self, long_frames: Any, context_latents: Any, chain: Any, num_frames: Any) -> str:
        """The Long video controls' chunks and overlaps (nothing at 0: one clip)."""
        try:
            plan = long_form.long_plan(long_frames, context_latents, chain, self._frames_count(num_frames))
        except FormError as error:
            return error_html(str(error))
        return "" if plan is None else long_timeline_html(plan)

    def fill_recipe(self, recipe: str, num_frames: Any) -> tuple:
        """(recipe, positions, multipliers, second clip's visibility) for a chosen recipe."""
        try:
            fields = form_fields.recipe_fields(recipe, self._frames_count(num_frames))
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

    def failures_refresh(self) -> str:
        """The jobs that ended without a video (a failure, or a server that stopped twice while it ran)."""
        return views.failures_html(self.history.failures())

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
            elif key in widgets.lora_rows:  # a job from before the panel, or from the API's `loras` alone
                updates[component] = form_fields.lora_row_blank(key)
        if widgets.tab == "v2v":
            updates[self.end_video_row] = gr.update(visible=entry.form.get("recipe") == "transition")
        return updates

    def history_delete(self, entry_id: str | None) -> tuple:
        if entry_id:
            self.history.delete(entry_id)
        return self.history_refresh(None)
