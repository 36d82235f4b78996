"""fer-core: a plugin-based facial expression recognition framework."""

from fer_core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
