"""Old import paths of moved modules (docs/design.md, "Package layout") give the very modules at their new place."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from deepstack_hf._moved_modules import MOVED_MODULES, new_module_name

SRC = Path(__file__).resolve().parents[1] / "src"

# every old path a user could have imported, with the new one written out by hand (optional packages: the old
# `lmms_eval_model` needs lmms-eval, tested beside it in tests/test_lmms_eval.py)
OLD_TO_NEW = {
    "deepstack_hf.serving": "deepstack_hf.integrations.serving",
    "deepstack_hf.serving.app": "deepstack_hf.integrations.serving.app",
    "deepstack_hf.serving.cli": "deepstack_hf.integrations.serving.cli",
    "deepstack_hf.vllm_plugin": "deepstack_hf.integrations.vllm",
    "deepstack_hf.conversion.synthetic_checkpoint": "deepstack_hf.testing_utils.synthetic_checkpoint",
    "deepstack_hf.conversion.tiny_sentencepiece": "deepstack_hf.testing_utils.tiny_sentencepiece",
    "deepstack_hf.conversion.original_reference": "deepstack_hf.testing_utils.original_reference",
    "deepstack_hf.demo": "deepstack_hf.testing_utils.demo",
}


@pytest.mark.parametrize("old, new", sorted(OLD_TO_NEW.items()))
def test_old_path_is_the_new_module(old, new):
    if old.startswith("deepstack_hf.serving"):
        pytest.importorskip("fastapi", reason="the server needs the `serving` extra")
    assert new_module_name(old) == new
    module = importlib.import_module(old)
    assert module is importlib.import_module(new) is sys.modules[old]
    assert module.__name__ == module.__spec__.name == new  # the module keeps its own identity


def test_names_from_old_paths_are_the_same_objects():
    from deepstack_hf.conversion.tiny_sentencepiece import train_tiny_sentencepiece as old  # the conformance run's
    from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece as new

    assert old is new
    from deepstack_hf.conversion.synthetic_checkpoint import build_synthetic_checkpoint as old_builder
    from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint as new_builder

    assert old_builder is new_builder


def test_every_old_path_points_at_an_existing_module():
    for old, new in MOVED_MODULES.items():
        assert old.startswith("deepstack_hf.") and importlib.util.find_spec(new) is not None, new
        assert importlib.util.find_spec(old) is not None, old
    assert new_module_name("deepstack_hf.servingx") is None  # a prefix only counts up to a dot
    assert new_module_name("deepstack_hf.modeling_deepstack") is None


def test_old_paths_work_in_a_fresh_interpreter_without_importing_the_package_first():
    code = (
        "from deepstack_hf.conversion.tiny_sentencepiece import train_tiny_sentencepiece\n"
        "import deepstack_hf.testing_utils.tiny_sentencepiece as new\n"
        "assert train_tiny_sentencepiece is new.train_tiny_sentencepiece\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(SRC), "PATH": ""})
