"""Train (or evaluate) CLIP from a checkout: `python main.py --config configs/NAME.py --workdir DIR`.

The same command as the installed `clip-jax train` (clip_jax/cli/train.py documents the flags
and exit codes: 0 done or finished, 2 a bad config, 3 diverged, 4 a checkpoint could not be
written, 130 Ctrl-C, 143 preempted with steps left: run it again).
"""

import sys

if __name__ == "__main__":
    from clip_jax.cli.train import console  # imports no JAX: SIGTERM is handled first

    sys.exit(console())
