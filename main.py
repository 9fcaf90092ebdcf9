"""Train (or evaluate) CLIP: `python main.py --config configs/NAME.py --workdir DIR`.

Running the same command again resumes from the newest checkpoint in DIR (a finished run says so
and exits). Override any config field on the command line, e.g. `--config.batch_size=4096
--config.model.name=ViT-L/14`. The resolved config is written to DIR/config.json.

Exit codes: 0 done, finished or preempted (SIGTERM: before the first step the process exits at
once, there being nothing new to save; after it, at the next step boundary with a checkpoint);
2 a bad config, workdir or data source (one line on stderr, before anything is compiled);
3 training diverged (NaN/Inf; the line names the last good checkpoint).
"""

import os
import signal
import sys
import threading

PREEMPTED_EXIT_CODE = 0


def exit_at_once_on_sigterm() -> None:
    """Until training takes SIGTERM over (`train.PreemptionGuard`), SIGTERM exits at once.

    Python runs signal handlers only between bytecodes, so a handler alone would wait for a
    long import or XLA compilation to finish; the signal's wake-up byte, written by the C-level
    handler, is read by a thread that exits even while the main thread is inside C++. Once the
    guard installs its own handler, the thread leaves SIGTERM to it.
    """
    def stop(*_) -> None:
        sys.stdout.flush()
        print("Stopped by SIGTERM before the first training step; nothing new to save (run the "
              "same command to resume).", file=sys.stderr, flush=True)
        os._exit(PREEMPTED_EXIT_CODE)

    def watch(fd: int) -> None:
        while True:
            received = os.read(fd, 64)
            if (bytes([signal.SIGTERM]) in received
                    and signal.getsignal(signal.SIGTERM) is stop):
                stop()

    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.signal(signal.SIGTERM, stop)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=watch, args=(read,), daemon=True, name="sigterm-watch").start()


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
    from absl import flags, logging
    from ml_collections import ConfigDict

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and TF are chatty at INFO
        # TFDS warns on every table/webdataset builder made from options rather than by name.
        logging.ABSLLogger.manager.getLogger("absl").addFilter(
            lambda record: "Using custom data configuration" not in record.getMessage())
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if not isinstance(config, ConfigDict):  # config_flags defers a load failure to first use
        try:
            config.mode
        except OSError as e:
            cause = str(e.__cause__ or e).strip().splitlines()
            print(f"error: cannot load --config: {cause[-1].strip()}", file=sys.stderr)
            return 2
    from clip_jax.training import config_checks

    try:
        config_checks.check_run(config, workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    initialize_distributed(config)
    import jax

    jax.config.update("jax_default_prng_impl", config.prng_impl)
    from clip_jax.training import train

    try:
        if config.mode == "train":
            train.train(config, workdir)
        else:
            from clip_jax.evaluation import evaluate

            evaluate.evaluate_workdir(config, workdir)
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except train.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def parse_or_exit(argv: list[str]) -> list[str]:
    """Parses flags so that a bad override is one line, not a traceback."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e)
        if text[:1] in "'\"":  # a KeyError's message comes quoted
            text = text[1:-1].encode().decode("unicode_escape")
        text = " ".join(text.replace("'", "").split())
        sys.exit(f"error: cannot apply {_culprit(argv, text)}: unknown field or wrong type "
                 f"({text}); the fields and their types are those of the config file "
                 "(configs/base.py for the shared ones).")


def _culprit(argv: list[str], error: str) -> str:
    """The one override an error is about: the one whose field or value the error quotes,
    else the one that fails when applied alone."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    for override in overrides:
        field, _, value = override[len("--config."):].partition("=")
        if field in error or field.rsplit(".", 1)[-1] in error or (value and repr(value) in error):
            return override
    return overrides[-1] if len(overrides) == 1 else "one of " + ", ".join(overrides)


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints and metrics.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    exit_at_once_on_sigterm()  # first: importing clip_jax takes seconds
    from clip_jax.runtime.host_tuning import reexec_with_huge_pages

    reexec_with_huge_pages()
    from absl import app

    define_flags()
    app.run(main, flags_parser=parse_or_exit)
