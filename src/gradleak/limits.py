"""The largest sizes gradleak builds a model with or loads images at: generous (far beyond the
models of the literature), small enough that a typo in an option or a hostile file fails in one
line instead of allocating for ever. Shared by the model registry, the image loaders and the
command line (this module imports nothing, so ``gradleak --help`` stays torch-free)."""

SIZE_LIMITS = {"num_classes": 100_000, "in_channels": 1024, "image_size": 4096, "width": 65_536}
