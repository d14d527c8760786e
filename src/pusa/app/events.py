"""A generation as a stream of `Update`s, and the two gradio handlers made from one such stream.

`Studio` (`app.studio`) yields the updates; `app.page` wires them twice per task tab: `ui_handler` for the
Generate button (errors stay in the page) and `api_endpoint` for the named endpoint that gradio_client
calls (errors raised, a closed stream cancels the job).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from ..serving.queue import JobQueue


@dataclass
class Update:
    """One step of a generation stream; `None` video/settings mean "leave as they are"."""

    progress: str | None  # None: leave as it is
    video: str | None = None
    settings: str | None = None  # JSON text: a dict would reach gradio_client with its paths rewritten
    job_id: str | None = None
    error: str | None = None
    clear: bool = False  # empty the video and settings (a new job started)
    text: str | None = None  # the progress in plain text, for API clients (None: as `progress` says)


def settings_text(settings: dict) -> str:
    return json.dumps(settings, indent=2, sort_keys=True)


def api_endpoint(stream_method: Callable[..., Iterator[Update]], queue: JobQueue) -> Callable:
    """A named endpoint: streams (video, settings, status); a failure raises the page's message.

    A client that cancels (gradio_client's `job.cancel()`) makes gradio close this stream: the job
    is cancelled with it, so nobody is left waiting behind a video that nobody will fetch.
    """

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
                    update.text if update.text is not None else gr.skip(),  # plain text, not the page's HTML
                )
        except GeneratorExit:
            if job_id is not None:
                queue.cancel(job_id)
            raise

    return endpoint


def ui_handler(stream_method: Callable[..., Iterator[Update]], until_queued: bool = False) -> Callable:
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
