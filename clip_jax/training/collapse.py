"""Noticing a contrastive run that has collapsed to chance after it had learned.

A softmax CLIP loss whose logits are all equal (every image as close to every caption, the
state a too-high learning rate drives a pretrained model into within a few dozen steps) is
exactly ln(batch): the cross entropy of a uniform guess among `batch` captions, each way. A
run that has been well below that and comes back to it has thrown its features away; the
loss alone cannot show it without knowing the batch, so the run says it once.
"""

from __future__ import annotations

import dataclasses
import math

# A run counts as having learned once its loss is below this fraction of chance, and as
# collapsed when it is back within `_AT_CHANCE` of chance (relative).
_LEARNED = 0.9
_AT_CHANCE = 0.01


@dataclasses.dataclass
class CollapseWatch:
    """Feed it each step's loss (`check`); it returns the warning once, the first time a loss
    that had fallen below 0.9 ln(batch) is back within 1 % of ln(batch).

    `batch_size`: the global batch the loss is computed over (the whole batch: GradCache and
    the chunked loss compute the same). `lr`: the configured peak learning rate, for the fix.
    """

    batch_size: int
    lr: float
    lowest: float = math.inf
    lowest_step: int = 0
    warned: bool = False

    @property
    def chance(self) -> float:
        return math.log(self.batch_size)

    def check(self, step: int, loss: float) -> str | None:
        if loss < self.lowest:
            self.lowest, self.lowest_step = loss, step
        learned = self.lowest < _LEARNED * self.chance
        if self.warned or not learned or abs(loss - self.chance) > _AT_CHANCE * self.chance:
            return None
        self.warned = True
        return (f"warning: at step {step} the loss is {loss:.4f}, chance (ln {self.batch_size} "
                f"= {self.chance:.4f}: every caption equally likely for every image), after "
                f"{self.lowest:.4f} at step {self.lowest_step}: the model has collapsed. Lower "
                f"config.optimizer.lr (now {self.lr:g}) or lengthen config.warmup_steps, and "
                "restart from init_from or an earlier checkpoint.")
