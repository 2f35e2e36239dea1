"""User-facing errors.

Every problem caused by the user's input (unknown name, bad file, shape mismatch, ...) is raised
as a :class:`GradleakError` with a one-line message naming the problem. The CLI prints it and exits
with status 2; library users can catch it like any ``ValueError``.
"""


class GradleakError(ValueError):
    """A clear, one-line error about the user's input or files."""
