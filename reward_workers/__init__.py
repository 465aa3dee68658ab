"""reward_workers"""

from flexgrpo.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before any model code imports torchvision beside the CPU torch
