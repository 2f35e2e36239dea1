"""gradleak: how much private training data leaks from federated-learning gradients.

The flow: ``models`` + ``data`` -> ``threat.observe`` (what the server sees) -> ``attacks``
(reconstruction) -> ``metrics`` and ``report``. ``experiments`` holds ready-made presets.
"""

__version__ = "0.1.0"

from gradleak.errors import GradleakError  # noqa: E402

__all__ = ["GradleakError", "__version__"]
