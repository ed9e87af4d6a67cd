"""Old import paths of modules that moved, kept working: the old name gives the module at its new place.

The package's layout (docs/design.md, "Package layout") put the integrations under `integrations/` and the test
and demo helpers under `testing_utils/`. Code written against the old paths, including every submodule below an
old package path (`deepstack_hf.serving.app`), imports the very same module objects from the new place: there is
one module, hence one class per name, whatever path imported it. `python -m` runs an old path too
(`python -m deepstack_hf.demo` runs the code of `deepstack_hf.testing_utils.demo`).

`install()` (called by `deepstack_hf/__init__.py`) puts [`MovedModuleFinder`] first on `sys.meta_path`; it
answers only for the old names in `MOVED_MODULES` and their submodules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

# old module path -> new module path (a package's submodules follow it)
MOVED_MODULES = {
    "deepstack_hf.serving": "deepstack_hf.integrations.serving",
    "deepstack_hf.vllm_plugin": "deepstack_hf.integrations.vllm",
    "deepstack_hf.lmms_eval_model": "deepstack_hf.integrations.lmms_eval",
    "deepstack_hf.conversion.synthetic_checkpoint": "deepstack_hf.testing_utils.synthetic_checkpoint",
    "deepstack_hf.conversion.tiny_sentencepiece": "deepstack_hf.testing_utils.tiny_sentencepiece",
    "deepstack_hf.conversion.original_reference": "deepstack_hf.testing_utils.original_reference",
    "deepstack_hf.demo": "deepstack_hf.testing_utils.demo",
}


def new_module_name(name: str) -> str | None:
    """The current path of module `name` when it lies under an old path (`deepstack_hf.serving.app` ->
    `deepstack_hf.integrations.serving.app`); `None` for every other name."""
    for old, new in MOVED_MODULES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path (imported there, once)."""

    def find_spec(self, fullname, path=None, target=None):
        new_name = new_module_name(fullname)
        if new_name is None or importlib.util.find_spec(new_name) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=False)

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(new_module_name(spec.name))
        spec.loader_state = module.__spec__  # the import system stamps `spec` on the module next
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the module is already executed at its new path: only give it back its own spec
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname: str):
        """The new module's code object (what `python -m <old path>` runs as `__main__`)."""
        new_name = new_module_name(fullname)
        return importlib.util.find_spec(new_name).loader.get_code(new_name)


def install() -> None:
    """Put the finder first on `sys.meta_path` (once per process)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
