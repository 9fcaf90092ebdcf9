"""Train (or evaluate) CLIP: `python main.py --config configs/NAME.py --workdir DIR`.

Running the same command again resumes from the newest checkpoint in DIR. Override any config
field on the command line, e.g. `--config.batch_size=4096 --config.model.name=ViT-L/14`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(config) -> None:
    """Starts jax.distributed before anything touches the devices, when asked to."""
    import jax

    dist = config.distributed
    address = dist.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if address:
        num = dist.num_processes if dist.num_processes > 0 else int(os.environ["JAX_NUM_PROCESSES"])
        pid = dist.process_id if dist.process_id >= 0 else int(os.environ["JAX_PROCESS_ID"])
        jax.distributed.initialize(address, num_processes=num, process_id=pid)
    elif dist.initialize:
        jax.distributed.initialize()


def main(argv) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and TF are chatty at INFO
    config = flags.FLAGS.config
    initialize_distributed(config)
    import jax

    jax.config.update("jax_default_prng_impl", config.prng_impl)
    from clip_jax import train

    try:
        if config.mode == "train":
            train.train(config, flags.FLAGS.workdir)
        else:
            from clip_jax import evaluate

            evaluate.evaluate_workdir(config, flags.FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def parse_or_exit(argv: list[str]) -> list[str]:
    """Parses flags so that a bad override is one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        name = str(e).strip("\"'")
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        culprit = next((a for a in overrides if name and name in a.split("=")[0]),
                       " ".join(overrides))
        sys.exit(f"error: cannot apply {culprit}: unknown field or wrong type ({e}); the fields "
                 "and their types are those of the config file (configs/base.py for the "
                 "shared ones).")


if __name__ == "__main__":
    from clip_jax.host_tuning import reexec_with_huge_pages

    reexec_with_huge_pages()
    app.run(main, flags_parser=parse_or_exit)
