"""What the torch GPT (backends.torchdist.model) can build: checked before any rank is spawned (no torch here)."""
from __future__ import annotations


def check_buildable(spec) -> None:
    """Raise ParsimError (one line) when this torch GPT cannot build `spec` as it is specified."""
    from parsim.errors import ParsimError
    why = [w for cond, w in ((spec.position == "alibi", "ALiBi positions"),
                             (spec.parallel_block, "a parallel attention/MLP block"),
                             (spec.norms_per_layer != 2, f"{spec.norms_per_layer} norms per layer"),
                             (spec.capacity_factor is not None, "a capacity factor (it runs dropless)"),
                             # SDPA with a band mask runs the whole square (no flash window): its time would not be
                             # the windowed kernel parsim prices
                             (getattr(spec, "sliding_window", None) is not None, "sliding-window attention"),
                             (getattr(spec, "kv_lora_rank", 0) > 0, "multi-head latent attention"))
           if cond]
    if why:
        raise ParsimError(f"model {spec.name}: the torch backend does not build {', '.join(why)}")
