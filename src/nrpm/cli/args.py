"""What the subcommands share: the parser class, value types, argument groups and small input helpers.

Every bad value is refused at parse time where argparse can see it (a type below raising
``argparse.ArgumentTypeError``), so it exits with status 2 and one line ``nrpm CMD: error: argument --X: ...``.
Checks that need several values or the loaded model raise :class:`UsageError` in the command, which
``nrpm.cli.main`` turns into the same kind of line and status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from pathlib import Path

from ..evaluation import TRAINED  # the lam row that keeps each layer's lam of a stored reprogramming
from ..reprogram import TARGET_TYPE_NAMES

__all__ = ["UsageError", "Parser", "HelpFormatter", "positive_int", "nonneg_int", "irls_steps", "positive_float",
           "nonneg_float", "budget", "lam_number", "lam_or_trained", "model_name", "attack_name", "attack_list",
           "model_spec", "data_spec",
           "normalization", "NormalizeAction", "device_spec", "key_value", "add_model_args", "add_model_spec_args",
           "add_data_spec_args", "model_settings", "add_threads_arg", "set_threads", "in_input_units",
           "add_estimator_args", "attack_options", "refuse_linf_budgets_over_range",
           "estimator_from_args", "add_download_arg", "download_if_asked", "with_flags", "SETTING_FLAGS",
           "check_output_folder", "TRAINED", "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

# The exit statuses of every command (nrpm.cli.main maps the exceptions to them)
EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad input a command finds after parsing (nrpm.cli.main: exit status 2, one line)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every help text, except where there is nothing to show.

    Options whose default is None (computed later, described in words) or a False flag would read
    ``(default: None)`` / ``(default: False)``, and texts that already say their default would say it twice.
    ``_get_help_string`` is the hook ArgumentDefaultsHelpFormatter itself overrides to add the text.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, ``nrpm CMD: error: ...``, and exit status 2.

    ``commands`` ({name: parser} of the subcommands) lets ``nrpm.cli.main`` report leftover arguments as the
    subcommand's error (argparse itself leaves them to the top-level parser: ``nrpm: error: ...``).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------------ value types
def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what} must be a finite number, got {text!r}")
    return value


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: samples, batch size, steps, threads)."""
    return _integer(text, 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0)


def irls_steps(text: str) -> int:
    """--K, the IRLS steps of a reprogramming: an integer >= 1 (K = 0 silently made every lam row the plain model)."""
    from ..validation import check_reprogram_K

    try:
        return check_reprogram_K(int(text), "--K")
    except ValueError as error:
        message = str(error) if text.strip().lstrip("+-").isdigit() else f"not an integer: {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def positive_float(text: str) -> float:
    """A finite number > 0 (IRLS eps, --budget-unit, learning rates)."""
    value = _number(text, "the value")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (tolerances, training budgets)."""
    value = _number(text, "the value")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _float_or_nan(text: str) -> float:
    """float(text), NaN for text that is not a number (which every range check then refuses, with its own message)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def budget(text: str) -> float:
    """An attack budget in --budget-unit: a finite number >= 0 (NaN and inf are refused; 0 = clean)."""
    value = _float_or_nan(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"budgets must be >= 0 and finite, got {text!r}")
    return value


def lam_number(text: str) -> float:
    """lam: a number in [0, 1] (NaN refused)."""
    value = _float_or_nan(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"lam values must lie in [0, 1] (1 = the original model), got {text!r}")
    return value


def lam_or_trained(text: str) -> float | str:
    """lam in [0, 1], or 'trained': each layer's lam as a stored reprogramming has it."""
    if text.strip().lower() == TRAINED:
        return TRAINED
    try:
        return lam_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"lam values must lie in [0, 1] (1 = the original model) or be "
                                         f"'{TRAINED}' (a stored reprogramming's own lam), got {text!r}") from None


def model_name(text: str) -> str:
    """A registered model name; a misspelt one is refused here with the close matches, whatever --checkpoint is."""
    from ..models import model_entry  # importing nrpm.models registers every model

    try:
        model_entry(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def attack_name(text: str) -> str:
    """A registered attack (``nrpm.attacks.register_attack``), in any spelling ``make_attack`` accepts;
    misspelt: refused with the close matches."""
    from ..attacks import attack_factory

    try:
        attack_factory(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def attack_list() -> str:
    """The registered attacks for a help text: 'fgsm (note), pgd, ...', from the registry."""
    from ..attacks import attack_entries

    return ", ".join(f"{e.name} ({e.help})" if e.help else e.name for e in attack_entries())


def model_spec(text: str) -> str:
    """A registry name (misspelt: refused with the close matches), FILE.py:FACTORY (the file must exist),
    package.module:FACTORY, timm:NAME or torchvision:NAME; nothing is imported while parsing."""
    from ..models import parse_model_spec

    try:
        parse_model_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def data_spec(text: str) -> str:
    """mnist, cifar10, cifar100, svhn, imagefolder:PATH or tensors:FILE (paths are checked when read)."""
    from ..data import parse_data_spec

    try:
        parse_data_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def normalization(values) -> dict:
    """MEAN... STD... (the first half means, the second half stds, one of each per channel) -> {'mean', 'std'}."""
    numbers = [_number(v, "--normalize values") for v in values]
    if len(numbers) % 2:
        raise argparse.ArgumentTypeError(f"wants as many stds as means (MEAN... STD...), got {len(numbers)} values")
    mean, std = numbers[: len(numbers) // 2], numbers[len(numbers) // 2:]
    if min(std) <= 0:
        raise argparse.ArgumentTypeError(f"stds (the second half) must be > 0, got {std}")
    return {"mean": mean, "std": std}


class NormalizeAction(argparse.Action):
    """``--normalize MEAN... STD...`` stored as {'mean', 'std'}; bad values are a parse error of the option."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, normalization(values))
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None


def device_spec(text: str) -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N' (or another torch device type); CUDA only when this machine has it."""
    if text == "auto":
        return text
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise argparse.ArgumentTypeError(f"CUDA is not available ({why}): use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text} does not exist: {torch.cuda.device_count()} CUDA "
                                             f"device(s) visible, cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return text


def key_value(text: str) -> tuple[str, object]:
    """'steps=40' -> ('steps', 40): the value is parsed as JSON when it can be, else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# ------------------------------------------------------------------------------------------ argument groups
def add_model_spec_args(p) -> None:
    """--model (any model spec), --model-arg and --normalize: what builds the model, for every command taking one."""
    p.add_argument("--model", required=True, type=model_spec,
                   help="registry name (linear, mlp2, mlp3, lenet, resnet18_narrow, ...), or your own model: "
                        "path/to/file.py:FACTORY or package.module:FACTORY (a function or class returning an "
                        "nn.Module that maps inputs in [0, 1] to logits), timm:NAME, torchvision:NAME")
    p.add_argument("--model-arg", action="append", type=key_value, metavar="KEY=VALUE",
                   help="keyword argument of the model's factory, repeatable; VALUE is parsed as JSON where it can be "
                        "(width=2, classes=[1,2], name=\"x\"), else kept as text")
    p.add_argument("--normalize", nargs="+", action=NormalizeAction, default=None, metavar="V",
                   help="the model expects normalised inputs: put (x - mean) / std in front of it, so that attacks "
                        "work on [0, 1] images; the first half of the values are per-channel means, the second half "
                        "stds, e.g. --normalize 0.4914 0.4822 0.4465 0.2470 0.2435 0.2616")


def add_data_spec_args(p) -> None:
    """--data and --image-size: the samples' source (the split, count and root are each command's own)."""
    p.add_argument("--data", type=data_spec, default=None,
                   help="mnist, cifar10, cifar100, svhn (torchvision's file layouts under --data-root), "
                        "imagefolder:PATH (PATH/<class>/<image>, or PATH/{train,test}/<class>/<image>) or "
                        "tensors:FILE (.pt {'x','y'} or .npz: float NCHW in [0, 1] or uint8 NHWC); default: the "
                        "registry model's dataset (other models need --data)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="imagefolder: the shorter side is resized to this, then centre-cropped to a square "
                        "(default: the model's input size, else 32)")


def add_model_args(p: argparse.ArgumentParser, *, whole_tensors_file: bool = False,
                   seed_help: str = "seed of the attacks' random starts, drawn per sample") -> None:
    """The model, its weights and reprogramming, the samples and the device: shared by eval, audit and certify
    (:func:`model_settings` turns them into EvalSettings fields).

    ``--lam`` is each command's own (eval sweeps a list, audit takes one value). ``whole_tensors_file``: without
    --n-samples a tensors:FILE is read whole (a named dataset: 1000 images), as nrpm.evaluation does.
    """
    add_model_spec_args(p)
    p.add_argument("--checkpoint", default=None,
                   help="default: 'pretrained' for a registry model, and required for your own model. "
                        "'pretrained' (the paper's released file, registry models only), a checkpoint path (a "
                        "state_dict of the model), or 'none' (the factory's own weights); a paradigm-3 model.pt of "
                        "nrpm reprogram brings its trained reprogramming along")
    p.add_argument("--reprogramming", default=None, metavar="FILE",
                   help="a saved reprogramming state (reprogramming.pt of nrpm reprogram --paradigm 2, or "
                        "nrpm.save_reprogramming) applied to the --checkpoint weights: its per-layer lam, K, eps "
                        "and layers (it replaces one a model.pt brings)")
    p.add_argument("--K", type=irls_steps, default=None,
                   help="IRLS steps (default 3; with a stored reprogramming: its own K, which an explicit --K "
                        "overrides in every layer, recorded in the results)")
    p.add_argument("--eps", type=positive_float, default=None,
                   help="IRLS eps (default 1e-3; with a stored reprogramming: its own, which an explicit --eps "
                        "overrides, recorded)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="module names/globs to reprogram (default: all Linear/Conv2d; ResNets: 3x3 block convs); "
                        "refused with a stored reprogramming, which fixes its layers")
    p.add_argument("--skip", nargs="+", default=None, help="module names/globs never reprogrammed")
    p.add_argument("--layer-types", nargs="+", default=None, choices=TARGET_TYPE_NAMES,
                   help="linear and/or conv2d (default: both)")
    add_data_spec_args(p)
    p.add_argument("--data-root", default=None, help="data folder (default $NRPM_DATA or ../shared/data)")
    p.add_argument("--n-samples", type=positive_int, default=None if whole_tensors_file else 1000,
                   help="how many images" + ("; a tensors:FILE without it is read whole (default: 1000)"
                                             if whole_tensors_file else ""))
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: first N test images; val: last N training images (to choose lam without the test "
                        "set); tensors: the first / last N of the file; imagefolder: of test/ / train/")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per forward/attack batch")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_arg(p)
    add_estimator_args(p)
    add_download_arg(p)


def model_settings(args) -> dict:
    """The EvalSettings fields of :func:`add_model_args`' options (each command adds its lam, attack, budgets).

    A model that is not in the registry has no default dataset: refused here, before anything is loaded."""
    from ..models import is_registry_name

    if args.data is None and not is_registry_name(args.model):
        raise UsageError(f"--model {args.model} is not a registry model, so nrpm does not know its data: give --data "
                         f"(mnist, cifar10, cifar100, svhn, imagefolder:PATH or tensors:FILE)")
    if args.checkpoint is None and not is_registry_name(args.model):
        raise UsageError(f"--model {args.model} needs its weights: give --checkpoint PATH (a state_dict of the "
                         f"model), or --checkpoint none to evaluate the factory's own initialisation")
    checkpoint = "pretrained" if args.checkpoint is None else args.checkpoint
    return dict(model=args.model, checkpoint=checkpoint, model_args=dict(args.model_arg or []),
                normalize=args.normalize, data=args.data, image_size=args.image_size, K=args.K, eps=args.eps,
                layers=args.layers, skip=args.skip or [], layer_types=args.layer_types, n_samples=args.n_samples,
                batch_size=args.batch_size, seed=args.seed, data_root=args.data_root, split=args.split,
                reprogramming=args.reprogramming, estimator=estimator_from_args(args))


def add_estimator_args(p) -> None:
    """The robust estimator of the reprogrammed layers (``nrpm.functional``): every command that reprograms.

    The flag is ``--estimator`` rather than ``--norm`` because ``nrpm audit --norm`` already names the threat
    model's norm (Linf / L2)."""
    from ..validation import ESTIMATORS, SCALES

    g = p.add_argument_group("robust estimator (default: the paper's L1)")
    g.add_argument("--estimator", choices=ESTIMATORS, default=None,
                   help="IRLS weighting: l1 (the paper's), mcp, huber or hm (the official code's)")
    g.add_argument("--gamma", type=positive_float, default=None, help="MCP / HM parameter (default 4)")
    g.add_argument("--delta", type=positive_float, default=None, help="Huber / HM parameter (default 3)")
    g.add_argument("--scale", choices=SCALES, default=None,
                   help="absolute: gamma, delta in vote units (the official code); relative: in units of each "
                        "output's mean absolute residual (default absolute)")


def estimator_from_args(args) -> dict | None:
    """{'norm', 'gamma', 'delta', 'scale'} when any estimator flag is given (the others at their defaults), else
    None (the L1 default, or a stored reprogramming's own estimator); invalid combinations raise UsageError."""
    from ..validation import DEFAULT_DELTA, DEFAULT_GAMMA, DEFAULT_NORM, DEFAULT_SCALE, check_estimator

    given = {k: getattr(args, k, None) for k in ("estimator", "gamma", "delta", "scale")}
    if all(v is None for v in given.values()):
        return None
    est = {"norm": given["estimator"] or DEFAULT_NORM,
           "gamma": DEFAULT_GAMMA if given["gamma"] is None else given["gamma"],
           "delta": DEFAULT_DELTA if given["delta"] is None else given["delta"],
           "scale": given["scale"] or DEFAULT_SCALE}
    try:
        check_estimator(est["norm"], est["gamma"], est["delta"], est["scale"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    return est


def add_download_arg(p) -> None:
    p.add_argument("--download", action="store_true",
                   help="fetch a missing dataset (MNIST, CIFAR-10) and the paper's checkpoint from their standard "
                        "URLs, checked by hash, into $NRPM_HOME (default ~/.cache/nrpm)")


def _named_dataset(args, model: str) -> str | None:
    """The dataset key of --data (None for imagefolder: / tensors:), else of the registry model."""
    from ..data import parse_data_spec
    from ..models import is_registry_name, model_entry

    if getattr(args, "data", None) is not None:
        return parse_data_spec(args.data).dataset
    return model_entry(model).dataset if is_registry_name(model) else None


def download_if_asked(args, model: str, checkpoint: str | None = "pretrained") -> None:
    """--download: the dataset (--data, else the model's) and, for --checkpoint pretrained, the model's released
    file; found files are kept. ``args.data_root`` becomes the folder that holds the data. A user's own files
    (imagefolder:, tensors:, a factory model) need nothing; CIFAR-100 and SVHN cannot be downloaded (UsageError)."""
    if not getattr(args, "download", False):
        return
    from ..data import DOWNLOADABLE
    from ..data.download import ensure_dataset
    from ..models.hub import ensure_pretrained
    from ..models import is_registry_name, model_entry

    dataset = _named_dataset(args, model)
    if dataset is not None and dataset not in DOWNLOADABLE:
        raise UsageError(f"--download fetches {' and '.join(DOWNLOADABLE)} only, not {dataset}: put its files under "
                         f"--data-root yourself (torchvision's layout), or drop --download")
    if dataset is not None:
        args.data_root = str(ensure_dataset(dataset, getattr(args, "data_root", None)))
    # no --checkpoint means pretrained for a registry model (model_settings)
    if checkpoint in ("pretrained", None) and is_registry_name(model) and model_entry(model).pretrained is not None:
        ensure_pretrained(model)


def add_threads_arg(p) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's; 1 is fastest on a busy CPU)")


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None keeps torch's default)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def in_input_units(budgets, unit: float) -> list[float]:
    """Budgets given in --budget-unit (e.g. 8 with 255) as [0, 1] input units (8/255)."""
    return [b / unit for b in budgets]


def attack_options(pairs, attack: str, unit: float, flag: str = "--attack-arg",
                   budgets_flag: str = "--budgets") -> dict:
    """The attack's options from ``flag`` KEY=VALUE pairs, with its step sizes in input units.

    One rule for every step size on the command line: like the budgets it is given in --budget-unit and divided
    by it here (``alpha=2`` with unit 255 is 2/255), so the options recorded in results.json are the values the
    attack used. A budget among the options (``eps=0.3``) is refused: budgets come from ``budgets_flag``."""
    from ..attacks import step_size_options
    from ..validation import check_no_budget_option

    options = dict(pairs or [])
    try:
        check_no_budget_option(options, flag, budgets_flag)
        steps = step_size_options(attack)
    except ValueError as error:
        raise UsageError(str(error)) from None
    for key in steps:
        if key in options and isinstance(options[key], (int, float)) and not isinstance(options[key], bool):
            options[key] = options[key] / unit
    return options


def refuse_linf_budgets_over_range(budgets, unit: float, flag: str = "--budgets") -> None:
    """UsageError for an Linf budget (input units) of 1 or more: a budget in pixel levels without --budget-unit."""
    from ..validation import check_linf_budgets

    try:
        check_linf_budgets(budgets, unit, flag)
    except ValueError as error:
        raise UsageError(str(error)) from None


# The library names settings as arguments (``checkpoint=PATH``); the CLI says the flag that sets each instead.
SETTING_FLAGS = {"model": "--model", "checkpoint": "--checkpoint", "reprogramming": "--reprogramming",
                 "model_args": "--model-arg", "normalize": "--normalize", "data": "--data", "lams": "--lam",
                 "layers": "--layers", "skip": "--skip", "layer_types": "--layer-types", "n_samples": "--n-samples",
                 "data_root": "--data-root", "image_size": "--image-size", "split": "--split"}
# 'name=' not inside a word, a path or a flag (so /runs/model=3 and --model-arg width=2 stay as they are)
_SETTING = re.compile(r"(?<![\w.\-/])(" + "|".join(sorted(SETTING_FLAGS, key=len, reverse=True)) + r")=")


def with_flags(message: str) -> str:
    """A library message with each ``setting=VALUE`` said as the CLI's ``--flag VALUE``."""
    return _SETTING.sub(lambda m: SETTING_FLAGS[m.group(1)] + " ", message)


def check_output_folder(folder, flag: str = "--out", command: str | None = None) -> None:
    """Fail before any work, naming the folder, when it cannot be created or written (read-only, no permission,
    a file in the way): otherwise the first write, hours later or the lock file, dies with a bare OSError.
    With ``command``: also when the folder holds another command's results (the run would refuse it later)."""
    from ..runs import RunRefused, claimable

    folder = Path(folder)
    if command is not None:
        try:
            claimable(folder, command)
        except RunRefused as error:
            raise UsageError(str(error)) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(f"cannot write to the output folder {folder} ({reason}): choose another {flag} or make "
                         f"it writable") from None
