"""The evaluator registry: `config.eval.evaluators` names -> classes.

Adding an evaluator: write one `Evaluator` subclass (its task-config function, the passes it
needs, its metrics; see `base.py`) in a module here and add one entry below. `config.eval`
gets a `heldout` task of it by default (`clip_jax.evaluation.options.default_config`), and
`Evaluation` runs the registered kinds in this order.
"""

from clip_jax.evaluation.evaluators.base import Evaluator
from clip_jax.evaluation.evaluators.few_shot import FewShot, few_shot_task
from clip_jax.evaluation.evaluators.linear_probe import LinearProbe, linear_probe_task
from clip_jax.evaluation.evaluators.retrieval import Retrieval, retrieval_task
from clip_jax.evaluation.evaluators.robustness import Robustness, robustness_task
from clip_jax.evaluation.evaluators.zero_shot import ZeroShot, zero_shot_task

EVALUATORS: dict[str, type[Evaluator]] = {
    "zero_shot": ZeroShot,
    "retrieval": Retrieval,
    "linear_probe": LinearProbe,
    "few_shot": FewShot,
    "robustness": Robustness,
}

__all__ = ["EVALUATORS", "Evaluator", "FewShot", "LinearProbe", "Retrieval", "Robustness",
           "ZeroShot", "few_shot_task", "linear_probe_task", "retrieval_task", "robustness_task",
           "zero_shot_task"]
