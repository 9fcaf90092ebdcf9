"""Train (or evaluate) CLIP: `clip-jax train --config FILE_OR_NAME --workdir DIR`.

`python main.py ...` in a checkout is the same command. The config is a file (configs/vit_b16.py,
clip_jax/configs/vit_b16.py) or the name of one in clip_jax/configs (vit_b16). Running the same
command again resumes from the newest checkpoint in DIR (a finished run says so and exits).
Override any config field on the command line, e.g. `--config.batch_size=4096
--config.model.name=ViT-L/14`; `--config.mode=eval` evaluates instead. The config, file and
overrides, is written to DIR/config.json (a resumed run whose config changed keeps the earlier
one as DIR/config.until_step_<step>.json); a mesh axis of -1 stays -1 there (each checkpoint
records the mesh it was saved on, and a resume onto another one says so).

Exit codes: 0 done or finished; 143 (128 + SIGTERM) preempted with steps left (SIGTERM: before
the first step the process exits at once, there being nothing new to save; after it, at the
next step boundary with a checkpoint), which job schedulers (JobSet/xpk restart policies, SLURM
requeue, W&B) read as "stopped, run again", where 0 read as "done" and was not restarted;
2 a bad config, workdir or data source (`ConfigError`: one line on stderr, before anything is
compiled); 3 training diverged (NaN/Inf; the line names the last good checkpoint); 4 a
checkpoint could not be written (its folder removed, a full disk; the line names the newest
saved one); 130 (128 + SIGINT) stopped by Ctrl-C (before training took it over at once; after
that the first Ctrl-C saves at the next step boundary, as SIGTERM does; a second one stops at
once). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from clip_jax.errors import ConfigError

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # the shell's code for SIGTERM: "run again"
CONFIG_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
SAVE_FAILED_EXIT_CODE = 4  # a checkpoint could not be written (folder gone, disk full)
INTERRUPTED_EXIT_CODE = 130  # the shell's code for SIGINT
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def exit_at_once_before_training() -> None:
    """Until training takes SIGTERM and SIGINT over (`loop.PreemptionGuard`), each exits at
    once: SIGTERM with code 143, Ctrl-C with 130, saying what the workdir keeps.

    Python runs signal handlers only between bytecodes, so a handler alone would wait for a
    long import or XLA compilation to finish; the signal's wake-up byte, written by the C-level
    handler, is read by a thread that exits even while the main thread is inside C++. Ctrl-C
    as Python's KeyboardInterrupt did worse: raised inside a garbage-collection callback it was
    ignored (the run went on training), and the interpreter's teardown under the compiling
    thread crashed (SIGSEGV). A Ctrl-C the shell told this process to ignore (`cmd &`) stays
    ignored. Once the guard installs its own handlers, the thread leaves both to it.
    """
    # The handler and the watching thread may both see one signal: the first to take the lock
    # prints and exits, the other waits for that exit (the message was printed twice).
    exiting = threading.Lock()

    def ended(name: str) -> None:
        """After training's guard gave the signals back, the run's own status stands (a
        finished run exited 143 "before the first step", and a scheduler ran it again)."""
        if _ENDED:
            print(f"{name} after the run ended: nothing left to stop.", file=sys.stderr,
                  flush=True)
            os._exit(_ENDED[0])

    def stop(*_) -> None:
        exiting.acquire()
        sys.stdout.flush()
        ended("SIGTERM")
        print("Stopped by SIGTERM before the first training step; nothing new to save (run the "
              "same command to resume).", file=sys.stderr, flush=True)
        os._exit(PREEMPTED_EXIT_CODE)

    def interrupt(*_) -> None:
        exiting.acquire()
        sys.stdout.flush()
        ended("Ctrl-C")
        kept = f"; {_kept(_STARTED[0], _listed_steps)}" if _STARTED else ""
        print(f"error: interrupted (Ctrl-C){kept}", file=sys.stderr, flush=True)
        os._exit(INTERRUPTED_EXIT_CODE)

    handlers = {signal.SIGTERM: stop}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handlers[signal.SIGINT] = interrupt

    def watch(fd: int) -> None:
        while True:
            received = os.read(fd, 64)
            for signum, handler in handlers.items():
                if bytes([signum]) in received and signal.getsignal(signum) is handler:
                    handler()

    read, write = os.pipe()
    os.set_blocking(write, False)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=watch, args=(read,), daemon=True, name="signal-watch").start()


# The workdir of the run this process started (`run`), for what a Ctrl-C before training says.
_STARTED: list[str] = []
# The exit status of the training that ended (`run`), which a later signal leaves as it is.
_ENDED: list[int] = []


def config_names() -> list[str]:
    """The configs `--config NAME` accepts: clip_jax/configs/NAME.py, but for the package's
    shared modules (`clip_jax.configs.SHARED`)."""
    from clip_jax import configs

    return sorted(name[:-3] for name in os.listdir(CONFIGS_DIR)
                  if name.endswith(".py") and name[:-3] not in ("__init__", *configs.SHARED))


def resolve_config_path(value: str) -> str:
    """A config file path as given, else clip_jax/configs/<value>.py; ConfigError if neither.

    A `:ARG` suffix (passed to `get_config(ARG)` by ml_collections) is kept.
    """
    path, colon, arg = value.partition(":")
    path = os.path.expanduser(path)  # `--config=~/my.py`: the shell expands no `~` after '='
    if os.path.isfile(path):
        return path + colon + arg
    bundled = os.path.join(CONFIGS_DIR, f"{path}.py")
    if path in config_names():
        return bundled + colon + arg
    what = "is a folder, not a config file" if os.path.isdir(path) else "no such config file"
    stem = os.path.splitext(os.path.basename(path))[0]
    if path == "base":  # the README's "paper's recipe", which every model config starts from
        raise ConfigError(f"--config {value!r}: base.py is the recipe the model configs start "
                          "from, not a config of its own; use --config vit_b32 (base's "
                          "ViT-B/32 run) or another model's config, or a file of your own that "
                          "changes it (c = base.get_config('ViT-B/16', lr=5e-4)).")
    if stem in config_names():  # e.g. the README's configs/vit_b16.py, typed outside a checkout
        raise ConfigError(f"--config {value!r}: {what} here; the bundled config of that name is "
                          f"--config {stem}{colon}{arg}.")
    close = difflib.get_close_matches(stem, config_names(), n=1, cutoff=0.6)
    hint = f"did you mean --config {close[0]}{colon}{arg}? Or " if close else ""
    raise ConfigError(f"--config {value!r}: {what}; {hint}pass a config file's path or one of "
                      f"{', '.join(config_names())}.")


def with_config_resolved(argv: Sequence[str]) -> list[str]:
    """`argv` (argv[0] the program) with the value of `--config NAME` / `--config=NAME`
    resolved to a file path, and moved before the first `--config.FIELD=VALUE` override:
    absl refused an override given first ("Found --config.data.dataset=... in argv before a
    value for --config was specified"), though flags go in any order elsewhere."""
    argv = list(argv)
    given: list[tuple[int, int]] = []  # (index, words) of each --config
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            argv[i + 1] = resolve_config_path(argv[i + 1])
            given.append((i, 2))
        elif arg.startswith(("--config=", "-config=")):
            flag, _, value = arg.partition("=")
            argv[i] = f"{flag}={resolve_config_path(value)}"
            given.append((i, 1))
    if given:  # the first: a second is refused by `parse_flags`, naming both
        start, words = given[0]
        argv[1:1] = [argv.pop(start) for _ in range(words)]
    return argv


def define_config_flag(values: Any, argv: Sequence[str], help_text: str) -> None:
    """`--config FILE` with its `--config.FIELD=VALUE` overrides taken from `argv` (as parsed
    later by `parse_flags`), on the absl FlagValues `values`."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, help_text, flag_values=values,
                                    lock_config=True, sys_argv=_none_overrides(argv)[0])


def define_flags(values: Any, argv: Sequence[str]) -> None:
    """The training command's flags: --config (and its overrides), --workdir."""
    from absl import flags

    define_config_flag(values, argv, "Config file (configs/vit_b16.py) or name (vit_b16).")
    flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints and metrics.",
                        flag_values=values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=values)


def load(argv: Sequence[str], values: Any) -> tuple[Any, str]:
    """(config, workdir) of a training command line (argv[0] the program name), its flags
    defined on and parsed into the absl FlagValues `values`; ConfigError for any mistake."""
    argv = with_config_resolved(argv)
    define_flags(values, argv)
    stray = parse_flags(argv, values)[1:]
    if stray:  # absl leaves them to the program, which took none: an override lost unsaid
        raise ConfigError(f"unrecognised arguments {stray}: {argv[0]} takes --config, --workdir "
                          "and overrides written --config.FIELD=VALUE (no space around '=', "
                          "none before '--', as a line continuation '\\ ' leaves).")
    return values["config"].value, values["workdir"].value


def parse_flags(argv: Sequence[str], values: Any) -> list[str]:
    """Parses `argv` (with `define_config_flag`'s flags) into `values`, loads the config;
    ConfigError, naming the flag or override at fault, for any mistake. Returns the rest."""
    from absl import flags
    from ml_collections import ConfigDict

    from clip_jax.cli import config_file
    from clip_jax.configs.fields import SYNONYMS

    sources = _config_values(argv)
    if len(sources) > 1:  # absl said "The flag 'config.FIELD' is defined twice"
        raise ConfigError(f"--config is given {len(sources)} times ({', '.join(sources)}): give "
                          "one config file or name, and change its fields with "
                          "--config.FIELD=VALUE.")
    source = next(iter(sources), "")
    if source:  # a file that fails to load is said as such, not as the override's failure
        loaded = config_file.load_checked(source)
        for override in _overrides(argv):
            if problem := config_file.override_error(loaded, override):
                raise ConfigError(problem)
    argv, to_none = _none_overrides(argv)
    try:
        rest = values(list(argv))
    except flags.Error as e:
        text = " ".join(str(e).split())
        required = re.search(r"Flag --(config|workdir) must have a value other than None", text)
        if required:  # absl's words named no fix
            raise ConfigError(f"--{required.group(1)} is required: {argv[0]} --config "
                              "FILE_OR_NAME --workdir DIR [--config.FIELD=VALUE ...] (see "
                              "--help).") from None
        unknown = re.match(r"Unknown command line flag '([^']+)'", text)
        if unknown and (problem := config_file.unknown_flag_error(unknown.group(1), argv)):
            raise ConfigError(problem) from None
        if unknown and "Did you mean" not in text:
            raise ConfigError(f"{text}; {argv[0]} takes --config, --workdir and "
                              "--config.FIELD=VALUE (see --help).") from None
        section = re.search(r"flag --(config\.[\w.]+)=(\S*): Failed to parse .* as a "
                            r"ConfigDict", text)
        if section:
            field, value = section.groups()
            example = f"--{field}.name={value}" if field == "config.model" else \
                f"--{field}.FIELD=VALUE"
            raise ConfigError(f"--{field} is a section of the config, not a value: set its "
                              f"fields one by one, e.g. {example} (the fields: the config "
                              "file, clip_jax/configs/base.py for the shared ones).") from None
        typed = re.match(r"flag --config\.([\w.]+)=(.*?): ", text)
        if typed and source and (problem := config_file.value_type_error(loaded, *typed.groups())):
            raise ConfigError(problem) from None
        raise ConfigError(text) from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e)
        if text[:1] in "'\"":  # a KeyError's message comes quoted
            text = text[1:-1].encode().decode("unicode_escape")
        text = " ".join(text.replace("'", "").split())
        culprit = _culprit(argv, text)
        synonym = SYNONYMS.get(
            culprit.removeprefix("--config.").partition("=")[0].rsplit(".", 1)[-1])
        hint = (f"did you mean {config_file.as_flags(synonym)}?"
                if synonym and "Did you mean" not in text
                else "the fields and their types are those of the config file "
                "(clip_jax/configs/base.py for the shared ones).")
        raise ConfigError(f"cannot apply {culprit}: unknown field or wrong type ({text}); "
                          f"{hint}") from None
    config = values["config"].value
    if not isinstance(config, ConfigDict):  # config_flags defers a load failure to first use
        try:
            config.mode
        except OSError as e:
            cause = str(e.__cause__ or e).strip().splitlines()
            raise ConfigError(f"cannot load --config: {cause[-1].strip()}") from None
        config = values["config"].value
    if source:
        config_file.check_known_fields(config, source)
    for field in to_none:
        _set_none(config, field)
    return rest


def _overrides(argv: Sequence[str]) -> list[str]:
    """The `--config.FIELD=VALUE` overrides of `argv` (`--config.FIELD VALUE` as FIELD=VALUE;
    absl's `-config.`, `--noconfig.` spellings too)."""
    found = []
    for i, arg in enumerate(argv):
        if arg.lstrip("-").removeprefix("no").startswith("config.") and arg.startswith("-"):
            value = argv[i + 1] if "=" not in arg and i + 1 < len(argv) else ""
            found.append(arg if "=" in arg or value.startswith("-") or not value
                         else f"{arg}={value}")
    return found


def _config_values(argv: Sequence[str]) -> list[str]:
    """The values of every `--config FILE` / `--config=FILE` in `argv`, in order."""
    values = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(("--config=", "-config=")):
            values.append(arg.partition("=")[2])
    return values


def _none_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` without its `--config.FIELD=None` overrides, and their fields. absl parses a
    value with the type of the field's current value, so `--config.model.logit_bias_init=None`
    failed as "could not convert string to float" where a config file set a bias: such
    overrides are applied after the config has loaded (`_set_none`)."""
    kept, fields = [], []
    for arg in argv:
        field, _, value = arg[len("--config."):].partition("=")
        if arg.startswith("--config.") and value == "None":
            fields.append(field)
        else:
            kept.append(arg)
    return kept, fields


def _set_none(config: Any, field: str) -> None:
    """Sets an optional field (an ml_collections placeholder: `logit_bias_init`,
    `peak_flops_per_device`, ...) to None; ConfigError for a field that is not optional or not
    there."""
    from ml_collections import ConfigDict

    from clip_jax.cli import config_file
    from clip_jax.configs.fields import suggestion

    *parents, name = field.split(".")
    section = config
    for part in parents:
        section = section.get(part) if hasattr(section, "get") else None
    fields = getattr(section, "_fields", {})
    if name not in fields:
        close = suggestion(field, list(fields))
        hint = f"did you mean {close}?" if close else (
            "the fields are those of the config file (clip_jax/configs/base.py for the shared "
            "ones).")
        raise ConfigError(f"cannot apply --config.{field}=None: unknown field; {hint}")
    value = fields[name]
    if isinstance(value, ConfigDict):
        raise ConfigError(f"--config.{field}=None: config.{field} is a section, not a value; "
                          "set its fields one by one (an evaluation task is left out by "
                          "config.eval.evaluators).")
    if not config_file.is_optional(section, name):
        empty = f" (empty: --config.{field}=)" if isinstance(value, str) else ""
        raise ConfigError(f"--config.{field}=None: config.{field} is not optional (it holds "
                          f"{type(value).__name__} {value!r}); give it a value{empty}.")
    section[name] = None


def _culprit(argv: Sequence[str], error: str) -> str:
    """The one override an error is about: the one whose field or value the error quotes,
    else the one that fails when applied alone."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    for override in overrides:
        field, _, value = override[len("--config."):].partition("=")
        if field in error or field.rsplit(".", 1)[-1] in error or (value and repr(value) in error):
            return override
    return overrides[-1] if len(overrides) == 1 else "one of " + ", ".join(overrides)


def prepare(config: Any, workdir: str) -> None:
    """Every check of a run that reads no data, in the order a user would fix them, then the
    devices: field domains, the workdir, the dataset name (ConfigError, in milliseconds); then
    jax.distributed, every process's config and workdir against process 0's and, to train,
    the config against this job's devices (mesh, batch divisibility, model name, dtypes,
    loss). Nothing is compiled and no dataset is built; the data source itself is opened by
    `train.train` before it compiles."""
    from clip_jax.runtime import distributed, hardware
    from clip_jax.training import config_checks

    config_checks.check_run(config, workdir)
    hardware.quiet_libtpu_without_tpu()  # before jax.distributed starts the backends
    distributed.initialize(config.distributed)
    hardware.check_backends()
    distributed.check_same_config(config, workdir)
    import jax

    jax.config.update("jax_default_prng_impl", config.prng_impl)
    if config.mode == "train":
        from clip_jax.training import train

        train.validate_config(config, jax.device_count(), jax.process_count(),
                              jax.devices()[0].platform, workdir)


def quiet_absl_logging() -> None:
    """WARNING unless --verbosity was given: orbax and TF are chatty at INFO, and TFDS warns on
    every table/webdataset builder made from options rather than by name. orbax's error
    reports with tracebacks are left out too: each failure of a checkpoint write or read
    reaches the run as an exception, which the command says in one line (a full disk gave
    four tracebacks, 300 lines, before the line promised); --verbosity shows them."""
    from absl import flags, logging

    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    for name in ("absl", "asyncio"):  # asyncio: orbax's writes' "exception was never retrieved"
        logging.ABSLLogger.manager.getLogger(name).addFilter(_shown)


def _shown(record: Any) -> bool:
    """Whether a record of the absl or asyncio logger is shown in the quiet default
    (`quiet_absl_logging`): not one with a traceback logged by orbax or through its code, nor
    asyncio's report of a future whose exception came from native code with no Python frame
    (tensorstore's, which orbax writes through: a failed write's other futures, 150 lines
    after the one-line error in one CI run)."""
    import traceback

    orbax = f"{os.sep}orbax{os.sep}"
    trace = record.exc_info[2] if record.exc_info else None
    orbax_traceback = bool(record.exc_info) and (
        orbax in record.pathname
        or any(orbax in frame.filename for frame in traceback.extract_tb(trace)))
    native = record.name == "asyncio" and bool(record.exc_info) and trace is None
    return (not orbax_traceback and not native
            and "Using custom data configuration" not in record.getMessage())


def run(config: Any, workdir: str) -> int:
    """Checks (`prepare`), then trains or evaluates; the exit code (see the module docstring).
    A ConfigError is printed as one `error: ...` line on stderr; other exceptions propagate.
    A `~` leading `workdir` is the home folder: `--workdir=~/runs` reaches us unexpanded (the
    shell expands `~` only at a word's start), and the run went into a folder named '~'."""
    workdir = os.path.expanduser(workdir)
    _STARTED[:] = [workdir]
    try:
        prepare(config, workdir)
        from clip_jax.runtime import launch
        from clip_jax.training import checkpoints, train
        from clip_jax.training.loop import NonFiniteLossError

        try:
            if config.mode == "train":
                stop_signal = train.train(config, workdir, launched=launch.process_start_time()
                                          ).get("stop_signal")
                # saved, with steps left: 128 + the signal, and the job runs again
                return _ended(128 + int(stop_signal) if stop_signal else 0)
            from clip_jax.evaluation import evaluate

            evaluate.evaluate_workdir(config, workdir)
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return _ended(DIVERGED_EXIT_CODE)
        except checkpoints.CheckpointWriteError as e:
            print(f"error: {e}", file=sys.stderr)
            return _ended(SAVE_FAILED_EXIT_CODE)
    except ConfigError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    except KeyboardInterrupt:  # before training's guard took Ctrl-C over, or a second one
        print(f"error: interrupted (Ctrl-C); {_kept(workdir)}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    return 0


def _ended(code: int) -> int:
    """`code`, recorded as the ended training's status for a signal that comes after it."""
    _ENDED[:] = [code]
    return code


def _listed_steps(workdir: str) -> list[int]:
    """The finished checkpoints' steps by folder name alone (orbax writes `N.orbax-checkpoint-
    tmp` and renames it `N` when done): what a signal handler on another thread can read while
    the main thread may hold the import lock."""
    try:
        return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                      if n.isdigit())
    except OSError:
        return []


def _kept(workdir: str, saved_steps: Callable[[str], list[int]] | None = None) -> str:
    """What an interrupted command leaves in `workdir`, and how to go on (`saved_steps`:
    `checkpoints.saved_steps` unless given)."""
    if saved_steps is None:
        from clip_jax.training import checkpoints

        saved_steps = checkpoints.saved_steps
    steps = saved_steps(workdir)
    if not steps:
        return f"no checkpoint was saved in {workdir}; the same command starts again."
    return (f"the checkpoints in {workdir} are kept; the same command resumes from the newest "
            f"(step {steps[-1]}).")


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort")


def help_text(program: str) -> str:
    """What `--help` prints: this module's docstring, the command's flags and the configs.

    absl's own `--help` lists only flags defined by the `__main__` module, which for an entry
    point script is none of ours.
    """
    from absl import flags

    values = flags.FlagValues()
    define_flags(values, [program])
    return (f"usage: {program} --config FILE_OR_NAME --workdir DIR [--config.FIELD=VALUE ...]"
            f"\n\n{__doc__.strip()}\n{_without_none_default(values.module_help(__name__))}"
            f"\n\nconfigs: "
            f"{', '.join(config_names())}\nabsl's flags (logging, flag files): --helpfull")


def _without_none_default(flags_help: str) -> str:
    """absl prints a required flag's unset default as "(default: 'None')"."""
    return re.sub(r"\n\s*\(default: 'None'\)", "", flags_help)


def main(argv: Sequence[str]) -> int:
    """`clip-jax train ARGS` / `python main.py ARGS` (argv[0] is the program name): the flags
    parsed by absl (`--verbosity`, flag files work), then `run`; `--help` prints `help_text`."""
    from absl import app, flags

    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(argv[0]))
        return 0
    if "--helpfull" in argv[1:]:  # absl's own printed `argv[0] [flags]` and exited 1
        print(f"{help_text(argv[0])}\n\n{flags.FLAGS.get_help()}")
        return 0

    def parse(args: list[str]) -> list[str]:
        from clip_jax.runtime.folders import check_current_directory

        try:
            check_current_directory()
            load(args, flags.FLAGS)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(CONFIG_ERROR_EXIT_CODE)
        return args[:1]

    def body(_: list[str]) -> int:
        quiet_absl_logging()
        return run(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(body, argv=list(argv), flags_parser=parse)  # exits with body's return value
    return 0


def console(argv: Sequence[str] | None = None) -> int:
    """The process entry: SIGTERM and Ctrl-C handling first (importing JAX takes seconds),
    then the XLA:CPU flags and the malloc re-exec (`runtime.host_tuning`), then `main`."""
    exit_at_once_before_training()
    from clip_jax.runtime import logs
    from clip_jax.runtime.host_tuning import tune_process

    tune_process()
    logs.setup_console()
    return logs.exit_status(lambda: main(sys.argv if argv is None else argv))
