"""Reports: figures, GIFs and results files."""

from gradleak.report.figures import image_grid, save_gif, save_grid
from gradleak.report.results import ResultsFile, environment, summarize, write_json

__all__ = [
    "ResultsFile",
    "environment",
    "image_grid",
    "save_gif",
    "save_grid",
    "summarize",
    "write_json",
]
