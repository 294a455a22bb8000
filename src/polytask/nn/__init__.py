"""Building blocks: input encoders, fused expert banks, gates and towers."""

from polytask.nn.encoders import TabularEncoder
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates
from polytask.nn.towers import Towers

__all__ = ["ExpertBank", "SoftmaxGates", "TabularEncoder", "Towers"]
