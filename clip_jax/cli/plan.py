"""`clip-jax plan`: the train step compiled for a TPU slice without one (memory, FLOPs,
collectives, roofline), its config given as `clip-jax train` takes it.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from clip_jax.cli.arg_types import StoreOnce, seconds
from clip_jax.errors import ConfigError


def plan_command(args: argparse.Namespace) -> int:
    """Exit 0: fits; 1: does not fit; 2: config error (a ConfigError, see `main`); 3: the plan
    itself failed (traceback on stderr), so that a crash never reads as "does not fit"."""
    from absl import flags

    from clip_jax.planning import topology
    topology.parse(args.topology)  # a typo said at once, not after JAX and the model import

    from clip_jax.cli import config_file, train
    from clip_jax.planning import plan

    unknown = [a for a in args.overrides if not a.startswith("--config.")]
    for flag in (a.partition("=")[0] for a in unknown if a.startswith("-")):
        if problem := config_file.unknown_flag_error(flag, ["clip-jax plan", *args.overrides]):
            raise ConfigError(problem)
    if unknown:
        raise ConfigError(f"unrecognised arguments {unknown}; overrides look like "
                          "--config.batch_size=4096 (as for clip-jax train).")
    argv = ["clip-jax plan", f"--config={train.resolve_config_path(args.config)}",
            *args.overrides]
    values = flags.FlagValues()
    train.define_config_flag(values, argv, "config file")
    train.parse_flags(argv, values)
    try:
        return plan.run(values.config, args.topology, as_json=args.json,
                        budget_seconds=args.search_seconds)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - any failure of the plan: shown whole, its own exit code
        traceback.print_exc()
        print("error: the plan failed (traceback above); exit code 3, not 1 (does not fit).",
              file=sys.stderr)
        return 3


def plan_arguments(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("--config", action=StoreOnce, required=True,
                    help="config file (configs/*.py) or name; override fields with "
                    "--config.FIELD=VALUE as for clip-jax train")
    pl.add_argument("--topology", required=True, help="Cloud TPU accelerator type: v5e-256, "
                    "v5litepod-64, v4-64, v5p-512, v6e-256, 2xv5e-256 (multi-slice)")
    pl.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pl.add_argument("--search-seconds", type=seconds, default=900.0,
                    help="when it does not fit: compile time allowed for alternatives (remat, "
                         "fsdp, microbatches); a compile is begun only when the longest so "
                         "far would still end inside it; 0 to skip (default 900)")
