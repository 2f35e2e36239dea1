"""Reports: truth-vs-reconstruction grids and GIFs; JSON records with versions
(:mod:`gradleak.records`, re-exported here for scripts)."""

from gradleak.records import environment, write_json
from gradleak.report.figures import image_grid, save_gif, save_grid

__all__ = ["environment", "image_grid", "save_gif", "save_grid", "write_json"]
