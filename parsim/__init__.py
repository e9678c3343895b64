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


__all__ = ["ParsimError", "predict", "search", "__version__"]
