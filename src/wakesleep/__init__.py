"""wakesleep: learning hierarchical latent-variable generative models with wake-sleep algorithms.

The Distributed Distributional Code Helmholtz Machine (DDC-HM; Vertes & Sahani) is the central algorithm;
its relatives and rivals run on the same models through the same ``sleep()`` / ``wake_gradient(x)`` contract.
"""

from wakesleep.algorithms import build_algorithm
from wakesleep.errors import WakesleepError
from wakesleep.models import build_model

__version__ = "0.1.0"
__all__ = ["build_model", "build_algorithm", "WakesleepError", "__version__"]
