"""Noticing a contrastive run that has collapsed to chance after it had learned.

A softmax CLIP loss whose logits are all equal (every image as close to every caption, the
state a too-high learning rate drives a pretrained model into within a few dozen steps) is
exactly ln(batch): the cross entropy of a uniform guess among `batch` captions, each way. A
run that has been well below that and comes back to it has thrown its features away; the
loss alone cannot show it without knowing the batch, so the run says it once.

One step at chance is not enough: a batch holding one pair several times (a tiny table's
duplicate rows, or a batch that spans two epochs of it) is exactly ln(batch) for any model,
every row's captions being alike. A collapse lasts, so it takes `_STEPS` steps in a row.
"""

from __future__ import annotations

import dataclasses
import math

# A run counts as having learned once its loss is below this fraction of chance, and as
# collapsed when it is back within `_AT_CHANCE` of chance (relative).
_LEARNED = 0.9
_AT_CHANCE = 0.01
# Consecutive steps at chance that make a collapse (one is a batch of duplicates, maybe).
_STEPS = 3


@dataclasses.dataclass
class CollapseWatch:
    """Feed it each step's loss (`check`); it returns the warning once, the first time a loss
    that had fallen below 0.9 ln(batch) has been back within 1 % of ln(batch) for 3 steps in a
    row.

    `batch_size`: the global batch the loss is computed over (the whole batch: GradCache and
    the chunked loss compute the same). `lr`: the configured peak learning rate, for the fix.
    """

    batch_size: int
    lr: float
    lowest: float = math.inf
    lowest_step: int = 0
    since: list[int] = dataclasses.field(default_factory=list)  # the steps at chance, in a row
    warned: bool = False

    @property
    def chance(self) -> float:
        return math.log(self.batch_size)

    def check(self, step: int, loss: float) -> str | None:
        if loss < self.lowest:
            self.lowest, self.lowest_step = loss, step
        learned = self.lowest < _LEARNED * self.chance
        at_chance = learned and abs(loss - self.chance) <= _AT_CHANCE * self.chance
        self.since = [*self.since, step] if at_chance else []
        if self.warned or len(self.since) < _STEPS:
            return None
        self.warned = True
        return (f"warning: at step {step} the loss is {loss:.4f}, chance (ln {self.batch_size} "
                f"= {self.chance:.4f}: every caption equally likely for every image) since "
                f"step {self.since[0]}, after {self.lowest:.4f} at step {self.lowest_step}: the "
                "model has collapsed. Lower "
                f"config.optimizer.lr (now {self.lr:g}) or lengthen config.warmup_steps, and "
                "restart from init_from or an earlier checkpoint.")
