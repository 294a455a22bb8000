"""Adapters on a frozen backbone: per-task low-rank updates, mixtures of LoRA experts,
MTL-LoRA, hypernetwork-generated and bottleneck adapters (with AdapterFusion).

``model.adapters`` in a run spec names the method, the backbone (a finished run or a weights
file, kept fixed) and the linear layers to adapt; :class:`~polytask.adapters.model.AdapterModel`
runs a batch whose rows ask for different tasks as one pass over (row, task) pairs
(:mod:`~polytask.adapters.routing`), each adapter computing every row with its own task's
weights in batched products. One file per method, found through :data:`ADAPTERS`; their
options are declared without torch in :mod:`~polytask.adapters.options`.

This package's ``__init__`` imports nothing: the spec reads the option declarations without
loading torch.
"""
