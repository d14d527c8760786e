"""`pusa serve` options: auth, exposure warning, model arguments, and the status line while loading."""

from __future__ import annotations

import argparse

import pytest

from pusa.app import serve, views
from pusa.request import WAN_DEFAULTS
from pusa.serving.queue import FAILED, LOADING, READY, ModelStatus
from pusa.weights.registry import TINY_DEFAULTS


def test_options_and_defaults():
    args = serve.add_serve_arguments(argparse.ArgumentParser()).parse_args([])
    assert (args.host, args.port, args.model, args.lora, args.outputs, args.auth) == (
        "127.0.0.1", 7860, "pusa-tiny", None, "outputs", None
    )  # fmt: skip
    args = serve.add_serve_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--model",
            "/m",
            "--lora",
            "p.pt",
            "--outputs",
            "o",
            "--auth",
            "a:b",
        ]
    )
    assert (args.host, args.port, args.model, args.lora, args.outputs, args.auth) == (
        "0.0.0.0", 8000, "/m", "p.pt", "o", "a:b"
    )  # fmt: skip


def test_defaults_come_from_the_model(tmp_path):
    assert serve.defaults_for("tiny-random") == TINY_DEFAULTS
    assert serve.defaults_for(str(tmp_path)) == WAN_DEFAULTS  # a Wan folder has no pusa_model.json
    (tmp_path / "pusa_model.json").write_text('{"defaults": {"num_frames": 33, "width": 96, "height": 64}}')
    defaults = serve.defaults_for(str(tmp_path))
    assert (defaults.num_frames, defaults.width, defaults.height) == (33, 96, 64)
    assert defaults.num_inference_steps == WAN_DEFAULTS.num_inference_steps  # unset fields keep Wan's
    (tmp_path / "pusa_model.json").write_text('{"defaults": {"frames": 33}}')
    with pytest.raises(ValueError, match=r"defaults \['frames'\] are not settings"):
        serve.defaults_for(str(tmp_path))
    with pytest.raises(ValueError, match=r"--model='/models/wan' is neither a folder nor a built-in model"):
        serve.defaults_for("/models/wan")


def test_auth():
    assert serve.parse_auth("ada:love:lace") == ("ada", "love:lace")
    assert serve.parse_auth(None) is None and serve.parse_auth("") is None
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(
            ValueError, match="--auth / PUSA_AUTH: expected USER:PASSWORD with both parts non-empty"
        ):
            serve.parse_auth(bad)


def test_exposure_warning():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serve.exposure_warning(host, None) is None
    assert serve.exposure_warning("0.0.0.0", ("a", "b")) is None
    assert serve.exposure_warning("0.0.0.0", None) == (
        "listening on 0.0.0.0 without --auth; anyone who can reach this machine can use the studio. "
        "Set --auth USER:PASSWORD or PUSA_AUTH."
    )
    assert "--auth user:password" in views.exposure_warning_html("0.0.0.0")


def test_model_arguments_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"--model='/no/such/dir' is neither a folder nor a built-in model \(pusa-tiny, tiny-random, tiny-random-a14b\)",
    ):
        serve.pipeline_loader("/no/such/dir")
    with pytest.raises(ValueError, match=r"--lora='x\.pt': the tiny-random model takes no LoRA"):
        serve.pipeline_loader("tiny-random", lora="x.pt")
    with pytest.raises(ValueError, match=r"--lora='/no/lora\.pt': no such file"):
        serve.pipeline_loader(str(tmp_path), lora="/no/lora.pt")
    assert serve.pipeline_loader("tiny-random")().identity == "tiny-random(seed=0)"


def test_serve_main_reports_bad_arguments(capsys):
    assert serve.main(["--auth", "nopassword"]) == 2
    assert "pusa serve: error: --auth / PUSA_AUTH: expected USER:PASSWORD" in capsys.readouterr().err


def test_status_line():
    loading = views.status_html(ModelStatus(LOADING, "loading model..."), [], "tiny-random")
    assert 'data-state="loading"' in loading and "loading model... (tiny-random)" in loading
    failed = views.status_html(ModelStatus(FAILED, "OSError: <no weights>"), [], "/m")
    assert "the model failed to load: OSError: &lt;no weights&gt;" in failed
    ready = views.status_html(ModelStatus(READY, "tiny-random(seed=0)", 1.5), [], "tiny-random")
    assert "model tiny-random(seed=0) ready (loaded in 1.5 s) · idle" in ready


def test_clip_fields_are_bounded_by_what_the_model_was_trained_on(tmp_path):
    from pusa.app import widgets
    from pusa.app.page import StudioPage
    from pusa.serving.history import History
    from pusa.serving.queue import JobQueue
    from pusa.weights.registry import model_limits

    def fields(limits):
        page = StudioPage(JobQueue(lambda: None, History(tmp_path / "outputs")), limits, "m")
        page.build()
        return {tab: page.tabs[tab].fields for tab in ("i2v", "frames", "v2v", "t2v")}

    # pusa-tiny declares 17, 33 and 49 frames at 64x64: each tab offers only those (17, its own, first)
    for tab, field in fields(model_limits("pusa-tiny")).items():
        for name, values in (("num_frames", [17, 33, 49]), ("width", [64]), ("height", [64])):
            widget = field[name]
            assert isinstance(widget, widgets.DropdownInput), (tab, name)
            assert [choice[1] for choice in widget.choices] == values and widget.value == values[0]
            assert "trained on" in widget.info
        # an API caller's other length reaches our validation as sent (and runs with a warning)
        assert field["num_frames"].preprocess(21) == 21
    # a model that declares nothing (tiny-random, real Wan folders) keeps its number boxes
    for field in fields(TINY_DEFAULTS).values():
        assert all(isinstance(field[name], widgets.NumberInput) for name in ("num_frames", "width", "height"))


def test_lora_panel_offers_the_models_loras_and_the_lora_dir(tmp_path):
    from pusa.app import serve, widgets
    from pusa.app.forms import LORA_KEYS
    from pusa.app.page import StudioPage
    from pusa.serving.history import History
    from pusa.serving.queue import JobQueue
    from pusa.weights.registry import PUSA_TINY_DIR, model_limits

    folder = tmp_path / "loras"
    (folder / "style").mkdir(parents=True)
    for name in ("b.safetensors", "style/a.pt", "notes.txt"):
        (folder / name).write_bytes(b"x")
    own = str(PUSA_TINY_DIR / "pusa_tiny_lora.safetensors")
    offered = serve.lora_files("pusa-tiny", str(folder))
    assert offered == (own, str(folder / "b.safetensors"), str(folder / "style" / "a.pt"))
    assert serve.own_loras("pusa-tiny") == (own,) and serve.own_loras("tiny-random") == ()
    with pytest.raises(ValueError, match=r"--lora-dir='/no/such' is not a folder"):
        serve.lora_files("pusa-tiny", "/no/such")
    assert (
        serve.add_serve_arguments(argparse.ArgumentParser()).parse_args(["--lora-dir", "x"]).lora_dir == "x"
    )

    def tabs(model):
        page = StudioPage(JobQueue(lambda: None, History(tmp_path / "outputs")), model_limits(model), "m",
                          lora_files=offered)  # fmt: skip
        page.build()
        return page.tabs.values()

    for tab in tabs("tiny-random-a14b"):
        # the rows are the tab's last fields (the API's parameters keep their order), then its text field
        assert list(tab.fields)[-len(LORA_KEYS) :] == list(LORA_KEYS) and "loras" in tab.fields
        row = tab.fields["lora_file_1"]
        assert isinstance(row, widgets.DropdownInput) and row.allow_custom_value
        assert [choice[1] for choice in row.choices] == list(offered)
        assert tab.fields["lora_expert_1"].visible and tab.fields["lora_expert_1"].value == "all"
    for tab in tabs("tiny-random"):  # one DiT: no expert to choose
        assert not tab.fields["lora_expert_4"].visible
