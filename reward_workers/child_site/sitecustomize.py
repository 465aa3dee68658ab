"""Imported at start-up by Python children of a process that runs vLLM (this folder is put on PYTHONPATH).

vLLM inspects model classes in a fresh `python -m ...` process, and the OpenAI server runs its engine in
another: those import torchvision before any flexgrpo code could prepare it. This hook prepares it first.
"""

import importlib.abc
import sys


class _PrepareTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 (importlib protocol)
        if name == "torchvision" and self in sys.meta_path:
            sys.meta_path.remove(self)
            from flexgrpo.compat import ensure_torchvision_importable

            ensure_torchvision_importable()
        return None


sys.meta_path.insert(0, _PrepareTorchvision())
