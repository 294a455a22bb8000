"""Fine-tune a base run per task, then merge the runs into one model or one routed MoE.

:mod:`polytask.merge.finetune` (``polytask finetune``) and :mod:`polytask.merge.runs`
(``polytask merge``) work on run directories; the methods, one file each, are pure functions
over state dicts, registered in :data:`polytask.merge.methods.MERGERS` (see
:mod:`polytask.merge.base`). Kept empty so that ``import polytask`` stays light.
"""
