"""Task relations: which tasks help each other, and how to group them.

``affinity`` measures TAG's lookahead affinity and the gradient cosines on a batch;
``recorder`` records them during training (``train.relations``); ``grouping`` chooses task
groups from them; ``study`` runs the grouping study behind ``polytask group``; ``transfer``
builds the pairwise transfer map behind ``polytask transfer``.
"""
