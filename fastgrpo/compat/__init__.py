"""Drop-in shims with the anchors' exact names, argument order and return tuples.

Switch a recipe by changing one import, e.g. in Flow-GRPO's train script::

    from fastgrpo.compat.flow_grpo import sde_step_with_logprob

Each shim names the anchor (repository, file) it replaces and where its numbers may differ (finite where the
anchor gives NaN; fp32 math where the anchor rounds in bf16).
"""
