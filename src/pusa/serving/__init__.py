"""Serving generation jobs: the job queue with one worker (`queue`) and the history of finished videos and
pending jobs on disk (`history`)."""
