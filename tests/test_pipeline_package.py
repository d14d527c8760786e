"""The pipeline package's seams: the public API, the typed task options, the load options and the
placement's record apart from its live objects."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from helpers import raises_input_error
from pusa.pipeline import CommonOptions, LoadOptions, PusaPipeline
from pusa.pipeline.tasks import TASK_FIELDS, RunOptions
from pusa.request import GenerationRequest
from pusa.runtime.expert_swap import ExpertSwap


def test_common_options_name_exactly_the_request_fields_the_tasks_share():
    shared = {f.name for f in dataclasses.fields(GenerationRequest)} - set(TASK_FIELDS)
    assert set(CommonOptions.__annotations__) == shared | {"callback"}
    assert set(RunOptions.__annotations__) == shared - {"num_frames"} | {"callback"}  # long_video's


def test_importing_pusa_loads_no_torch_and_the_public_names_resolve_on_use():
    code = (
        "import sys, pusa\n"
        "assert 'torch' not in sys.modules, 'import pusa pulled in torch'\n"
        "from pusa import InputError, GenerationRequest\n"
        "assert 'torch' not in sys.modules\n"
        "from pusa import PusaPipeline, PusaOutput\n"
        "print(PusaPipeline.__module__, PusaOutput.__module__, InputError.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["pusa.pipeline.core", "pusa.pipeline.record", "pusa.params"]


def test_an_unknown_public_name_is_an_attribute_error():
    import pusa

    with pytest.raises(AttributeError, match="PusaPipe"):
        pusa.PusaPipe  # noqa: B018


def test_the_old_constructor_name_is_the_builtin_one():
    assert PusaPipeline.from_preset.__func__ is PusaPipeline.from_builtin.__func__


def test_load_options_are_checked_by_name_before_anything_loads():
    for option, value in [("memory", "huge"), ("lora_mode", "merge"), ("cfg_batch", "maybe"),
                          ("fp8_compute", "int4"), ("attention", "nope")]:  # fmt: skip
        with raises_input_error(option, value):
            LoadOptions(**{option: value}).checked("cpu")
    with raises_input_error("model", "huge"):
        PusaPipeline.from_builtin("huge")
    with pytest.raises(TypeError, match="memroy"):
        PusaPipeline.from_builtin("tiny-random", memroy="full")


def test_the_swap_tier_keeps_its_live_switch_out_of_the_json_record():
    pipe = PusaPipeline.from_builtin("tiny-random-a14b", memory="swap")
    assert isinstance(pipe.expert_switch, ExpertSwap)
    assert pipe.acceleration["memory_tier"] == "swap"
    json.dumps(pipe.acceleration)  # a plain record: nothing live in it
    one = PusaPipeline.from_builtin("tiny-random")
    assert one.expert_switch is None and json.dumps(one.acceleration)
