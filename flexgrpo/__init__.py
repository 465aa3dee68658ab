"""flexgrpo: distributed GRPO for text-to-image and text-to-video diffusion models.

This package holds what every role shares: the config schema, the records passed between roles, the
Redis control plane, the driver loop and the CLI.
"""

from flexgrpo.compat import ensure_torchvision_importable

ensure_torchvision_importable()
