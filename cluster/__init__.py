"""cluster"""

import flexgrpo  # noqa: F401  (prepares torchvision for the CPU torch before any model code loads)
