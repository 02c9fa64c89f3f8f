"""fgray: forward-gradient experiments on Ray.

data -> models -> estimators -> optim -> loop -> trainable -> sweep -> results -> analysis
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fgray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
