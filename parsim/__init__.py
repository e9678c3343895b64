"""parsim: predict, then measure, LLM training under data/tensor/pipeline parallelism.

Importing parsim never imports torch; the real backend lives in ``backends/``.
"""
from parsim.errors import ParsimError

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Price one Plan; see :func:`parsim.predict.predict`."""
    from parsim.predict import predict as _predict
    return _predict(*args, **kwargs)


def search(*args, **kwargs):
    """Rank every valid plan; see :func:`parsim.search.search`."""
    from parsim.search import search as _search
    return _search(*args, **kwargs)


def _callable_module(module_name: str, function_name: str) -> None:
    """Make module parsim.<name> callable as its function of the same name. Importing the submodule
    parsim.predict (or parsim.search) rebinds the package attribute `parsim.predict` from the function
    above to the module, which made every call after the first fail with "'module' object is not
    callable"; a callable module keeps `parsim.predict(...)` working whatever was imported first."""
    import sys
    import types
    mod = sys.modules[module_name]

    class _Module(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)
    mod.__class__ = _Module


__all__ = ["ParsimError", "predict", "search", "__version__"]
