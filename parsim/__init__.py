"""parsim: predict, then measure, LLM training under data/tensor/pipeline parallelism.

    import parsim
    model = parsim.load_model("llama2-13b")            # or a YAML/JSON/config.json file
    cluster = parsim.load_cluster("dgx-h100", 64)
    rep = parsim.predict(model, cluster, parsim.Plan(dp=8, tp=8, global_batch=1024, micro_batch=1))
    table = parsim.search(model, cluster, 64, global_batch=1024)   # every valid plan, ranked (DataFrame)

Importing parsim never imports torch; the real backend lives in ``backends/``.
"""
from parsim.errors import ParsimError

__version__ = "0.1.0"

# The functions are bound after their modules are imported, so that ``import parsim.predict``
# (which would otherwise leave the *module* as ``parsim.predict``) cannot shadow them.
from parsim.model import ModelSpec, load_model  # noqa: E402
from parsim.plan import Plan  # noqa: E402
from parsim.predict import StepReport, predict  # noqa: E402
from parsim.search import search  # noqa: E402
from parsim.topology import Cluster, load_cluster  # noqa: E402

__all__ = ["ParsimError", "predict", "search", "Plan", "ModelSpec", "StepReport", "Cluster", "load_model",
           "load_cluster", "__version__"]
