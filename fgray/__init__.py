"""fgray: forward-gradient experiments on Ray.

The stages, each using only those before it:

    data -> models -> estimators -> optim -> loop -> trainable -> sweep -> analysis
                                              (status reads what they leave behind)

and the ground floor every stage may use: config (one trial's settings) and spec (a sweep's
planned trials), experiment (where an experiment lives: its directory, manifest, driver lock
and Tune's files) and results (the Parquet store: its schemas, rows, reading and writing).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fgray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
