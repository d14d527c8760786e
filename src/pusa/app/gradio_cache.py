"""gradio's cache folder: how long gradio keeps its copies of uploads and of the videos it sends, and the
sweeper that deletes its copies of our videos (gradio does not track those). `app.page` passes `CACHE` to
the page; `app.launch` starts the sweeper beside the server.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import gradio as gr

CACHE = (600, 3600)  # seconds: check every 10 minutes, delete gradio's copies older than an hour

# How `History.add` names a video: <stamp>-<task or recipe>-<seed>-<job id>.mp4
OUR_VIDEO = re.compile(r"\d{8}-\d{6}-[a-z0-9]+-\d+-[0-9a-f]{12}\.mp4")


def cached_copies(cache_dir: str | Path) -> list[Path]:
    """The mp4 files one level down in gradio's cache folder (`<cache>/<hash>/<name>.mp4`). Folders that
    vanish meanwhile (other servers share the folder) are skipped, not an error."""
    try:
        folders = [entry.path for entry in os.scandir(cache_dir) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    copies = []
    for folder in folders:
        try:
            copies += [Path(entry.path) for entry in os.scandir(folder) if entry.name.endswith(".mp4")]
        except OSError:
            continue
    return copies


def sweep_cached_copies(cache_dir: str | Path, age_s: float) -> int:
    """Delete gradio's copies of our videos older than `age_s`; returns how many.

    gradio copies every file an event returns into its cache folder (`<cache>/<hash>/<name>`) and, unlike
    uploads, does not track these copies for `delete_cache`: the folder grew by one file per video. Only
    files named like a video of ours (`OUR_VIDEO`, also those since deleted from History) are touched,
    and only inside the cache folder."""
    deleted, now = 0, time.time()
    for copy in cached_copies(cache_dir):
        try:
            # ctime: gradio's copy keeps the source's mtime (copy2), so an old video's fresh copy
            # would look old; its ctime is when the copy was made.
            if OUR_VIDEO.fullmatch(copy.name) and now - copy.stat().st_ctime > age_s:
                copy.unlink()
                deleted += 1
                if not any(copy.parent.iterdir()):
                    copy.parent.rmdir()
        except OSError:  # gone meanwhile, or in use: the next sweep tries again
            continue
    return deleted


def sweep_while_served(demo: gr.Blocks, every_s: float, age_s: float) -> None:
    """Sweep every `every_s` until the page is closed (a sweeper left running after its server closed
    went on deleting copies that other servers sharing the cache folder still served)."""
    served = False
    while True:
        running = demo.is_running
        if served and not running:
            return
        served = served or running
        with contextlib.suppress(OSError):  # the outputs folder itself gone: try again later
            sweep_cached_copies(demo.GRADIO_CACHE, age_s)
        time.sleep(every_s)
