"""The `synthaug` command line: each command parses its options, prints what it will do, and calls
one library function. Mistakes a user can fix end in one sentence and exit code 1.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from synthaug import progress
from synthaug.version import __version__
from synthaug.data import config as data_config
from synthaug.errors import SynthaugError
from synthaug.files import blocking_file
from synthaug.recipe import DEFAULT_STRENGTH, STRENGTH_RANGE, Sampler
from synthaug.words import count

# Rich draws 80 columns when it is not writing to a terminal, which wraps tables and log lines in a log file;
# logs get 160 unless COLUMNS says otherwise (a terminal keeps its own width).
_LOG_WIDTH = None if "COLUMNS" in os.environ else 160
console = Console(width=None if sys.stdout.isatty() else _LOG_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _LOG_WIDTH)


class FlagsShowNoType:
    """A flag takes no value, so its row in the help shows no type (typer would print ``<bool>``)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class Command(FlagsShowNoType, TyperCommand):
    """Every synthaug command."""


class OneSentenceErrors(FlagsShowNoType, TyperGroup):
    """Usage mistakes (an unknown option, a missing or malformed value) end like every other user
    mistake: one sentence on stderr and exit code 1, instead of click's usage panel and code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # the base of click's UsageError, BadParameter, NoSuchOption, ...
            if not standalone_mode:
                raise
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                sub = ctx.info_name if ctx.parent else None
            else:  # e.g. "--fresh=yes" carries no context: name the command from the arguments
                sub = next((a for a in (sys.argv[1:] if args is None else args) if a in self.commands), None)
            command = " ".join(filter(None, ["synthaug", sub]))
            err_console.print(f"[bold red]Error:[/] {escape(e.format_message().rstrip('.'))}; see `{command} --help`.",
                              highlight=False, soft_wrap=True)
            sys.exit(1)
        except typer.Abort:
            if not standalone_mode:
                raise
            err_console.print("[bold red]Error:[/] Aborted.", highlight=False)
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=OneSentenceErrors,
    name="synthaug",
    help="Synthetic training data for image classifiers, and honest numbers on whether it helps.",
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)


# How each command spells what library errors name: a library sentence names the library's arguments (and recipe
# keys), e.g. "{num} and {per_class} must be positive." (SynthaugError.arguments), and the command the user typed
# prints its flags instead: "--num and --per-class must be positive.". A name a command has no flag for is printed
# as the library names it (e.g. the recipe key run_dir).
FLAGS: dict[str, dict[str, str]] = {
    "inspect": {"grid": "--grid"},
    "train": {"run_dir": "--out"},  # only when --out is given: see flag_names
    "generate": {
        "generator": "--run", "run": "--run", "out": "--out", "classes": "--class", "species": "--species",
        "attributes": "--attr", "all_classes": "--all-classes", "num": "--num", "per_class": "--per-class",
        "guidance": "--guidance", "sampler": "--sampler", "steps": "--steps", "seed": "--seed",
        "batch_size": "--batch-size", "images_per_shard": "--shard-size", "from_real": "--from-real",
        "strength": "--strength", "min_confidence": "--min-confidence", "max_draws": "--max-draws",
        "overwrite": "--overwrite",
    },
    "evaluate": {"data": "--data"},
    "benchmark": {"out": "--out"},
}


def flag_names(command_name: str, options: dict) -> dict[str, str]:
    """The FLAGS of a command as it was called: train's run folder is --out only when --out was given (else it is
    the recipe's run_dir, from the recipe or --set)."""
    names = FLAGS.get(command_name, {})
    if command_name == "train" and options.get("out") is None:
        names = {k: v for k, v in names.items() if k != "run_dir"}
    return names


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # e.g. 'synthaug[text]' is not markup
    raise typer.Exit(code)


# The OS errors whose remedy is room on the disk or a folder the user may write to.
SPACE_OR_PERMISSION = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_sentence(e: OSError) -> str:
    """An OSError as one sentence: what failed, why, and what to do."""
    path = e.filename
    where = f" {path}" if path else ""
    reason = e.strerror or str(e)
    if e.errno in SPACE_OR_PERMISSION:
        return (f"Could not write or read{where}: {reason}; free space or choose a writable folder, "
                "then run the same command again (finished work is kept).")
    if e.errno == errno.ENOTDIR and path:
        blocker = blocking_file(Path(path))
        return f"Could not write or read {path}: {blocker or 'a part of that path'} is a file, not a folder; choose another path."
    if e.errno == errno.EISDIR and path:
        return f"Could not write or read {path}: it is a folder, not a file; choose a file path."
    return f"Could not write or read{where}: {reason}; check the path, then run the same command again (finished work is kept)."


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or `kill`'s stop), raised where the command is so that it stops as after Ctrl-C:
    workers stopped, finished files kept, no traceback."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """While a command runs, SIGTERM raises Terminated in it instead of killing the process on the spot."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def expand_home(path: Path) -> Path:
    """``~`` and ``~user`` at the start of a path option as the home folder; as written where there is none."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def command(name: str, **kwargs):
    """Register a command whose user mistakes (SynthaugError, an OS error) print one sentence and exit 1; a library
    error names the command's flags (FLAGS)."""

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            k = {name: expand_home(v) if isinstance(v, Path) else v for name, v in k.items()}  # --out=~/x: no shell expands it
            try:
                # Bars for a person at a terminal; plain lines at a steady interval in a log file or a pipe
                # (where rich's live bars print nothing, or a blank line for each finished bar).
                with terminate_as_interrupt(), \
                        progress.enabled(err_console) if err_console.is_terminal else progress.lines(sys.stderr):
                    return fn(*a, **k)
            except SynthaugError as e:
                fail(e.sentence(flag_names(name, k)))
            except Terminated:
                fail("Stopped by SIGTERM; files already written are kept, and running the same command again "
                     "continues.", 143)
            except KeyboardInterrupt:
                fail("Interrupted; files already written are kept, and running the same command again continues.", 130)
            except OSError as e:  # a full disk, a read-only or missing folder: the OS's reason, then what to do
                fail(os_error_sentence(e))

        return app.command(name, cls=Command, **kwargs)(wrapper)

    return register


def show_version(value: bool) -> None:
    if value:
        console.print(f"synthaug {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debugging detail.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")] = False,
) -> None:
    """Synthetic training data for image classifiers, and honest numbers on whether it helps."""
    from rich.logging import RichHandler

    if ctx.invoked_subcommand is None:  # `synthaug` alone prints the help
        help_text = ctx.get_help()  # the rich help prints itself and returns ""
        if help_text:
            typer.echo(help_text)
        raise typer.Exit(0)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("synthaug")
    root.handlers[:] = [RichHandler(console=err_console, show_path=False, show_time=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


# Dataset options shared by the commands that read a dataset.
Resolution = Annotated[int, typer.Option("--resolution", "-r", help="Square side in pixels (0: the format's default).")]
Target = Annotated[str, typer.Option(help="CelebA: identity or an attribute; CelebA-Dialog: attribute whose level is the class.")]
Level = Annotated[data_config.Level, typer.Option(help="NABirds: leaf visual categories, or species.")]
Split = Annotated[data_config.Split, typer.Option(help="auto: the dataset's own split when it has a usable one, else a seeded stratified split.")]
Shots = Annotated[int, typer.Option("--shots-per-class", help="Keep this many training images per class (0: all).")]
Seed = Annotated[int, typer.Option(help="Seed of the stratified split and of the low-data subset.")]
Strict = Annotated[bool, typer.Option("--strict", help="Treat unreadable files and empty classes as errors.")]
Crop = Annotated[bool, typer.Option("--crop/--no-crop", help="Crop to bounding boxes where the format has them.")]


@command("datasets")
def datasets_command() -> None:
    """List the dataset formats synthaug reads and the layout each expects."""
    from synthaug.data import FORMATS

    table = Table(title="Dataset formats (spec: FORMAT:PATH)", show_lines=True)
    table.add_column("format", style="bold cyan", no_wrap=True)
    table.add_column("what")
    table.add_column("layout it expects")
    for fmt in FORMATS.values():
        table.add_row(fmt.name, fmt.summary, fmt.layout)
    console.print(table)


@command("inspect")
def inspect_command(
    spec: Annotated[str, typer.Argument(help="Dataset spec, FORMAT:PATH or digits (see `synthaug datasets`).")],
    resolution: Resolution = 0,
    target: Target = "",
    level: Level = "category",
    split: Split = "auto",
    shots_per_class: Shots = 0,
    seed: Seed = 0,
    crop: Crop = True,
    strict: Strict = False,
    grid: Annotated[Optional[Path], typer.Option(
        help="Where to write the sample grid PNG (default: the dataset's cache folder, or $SYNTHAUG_CACHE/grids/).")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many classes (0: all).")] = 30,
) -> None:
    """Decode a dataset (cached) and show its splits, classes, attributes, unreadable files and a sample grid."""
    from synthaug.data import DataConfig, parse_spec
    from synthaug.inspection import inspect_dataset

    config = DataConfig(spec=spec, resolution=resolution, target=target, level=level, crop=crop, split=split,
                        shots_per_class=shots_per_class, seed=seed, strict=strict)
    ds, path = inspect_dataset(config, grid)
    source = f"read from the cache {ds.cache_path}" if ds.from_cache else (
        f"decoded and cached in {ds.cache_path}" if ds.cache_path else "built in, no files" if parse_spec(spec)[1] is None
        else "decoded, not cached (the cache could not be written; set SYNTHAUG_CACHE to a writable folder to keep it)")
    console.print(f"[bold]{escape(ds.name)}[/]  {escape(config.spec)}")
    console.print(f"{count(len(ds), 'image')}, {count(ds.num_classes, 'class')}, {ds.resolution}x{ds.resolution} px, "
                  f"{count(ds.channels, 'channel')}; {source}", highlight=False)
    splits = Table(title="Images per split")
    for name in ("train", "val", "test"):
        splits.add_column(name, justify="right")
    splits.add_row(*(str(int((ds.splits == s).sum())) for s in ("train", "val", "test")))
    console.print(splits)

    per_split = {s: ds.class_counts(s) for s in ("train", "val", "test")}
    table = Table(title="Images per class")
    table.add_column("id", justify="right")
    table.add_column("class")
    for name in ("train", "val", "test"):
        table.add_column(name, justify="right")
    shown = range(ds.num_classes) if limit <= 0 else range(min(limit, ds.num_classes))
    for c in shown:
        table.add_row(str(ds.class_ids[c]), escape(ds.class_names[c]), *(str(int(per_split[s][c])) for s in per_split))
    console.print(table)
    if len(shown) < ds.num_classes:
        console.print(f"... {count(ds.num_classes - len(shown), 'more class')} (--limit 0 shows all).", highlight=False)

    if ds.attributes is not None:
        attrs = Table(title="Attributes: images per level")
        attrs.add_column("attribute")
        attrs.add_column("levels", justify="right")
        attrs.add_column("count per level (0, 1, ...)")
        for a, (name, levels) in enumerate(zip(ds.attribute_names, ds.attribute_levels)):
            counts = ", ".join(str(int(n)) for n in ds.attribute_counts(a))
            attrs.add_row(escape(name), str(levels), counts)
        console.print(attrs)

    console.print(f"Unreadable files skipped: {len(ds.skipped)}", highlight=False)
    for note in ds.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(f"Sample grid: {path}", highlight=False, soft_wrap=True)


@command("classes")
def classes_command(
    spec: Annotated[str, typer.Argument(help="Dataset spec, FORMAT:PATH or digits.")],
    search: Annotated[str, typer.Option(help="Only names containing this (case, spaces and punctuation ignored).")] = "",
    target: Target = "",
    level: Level = "category",
) -> None:
    """List a dataset's class names (and NABirds species with their categories) from its annotation files."""
    from synthaug.data import DataConfig, read_catalog
    from synthaug.inspection import find_classes

    catalog = read_catalog(DataConfig(spec=spec, target=target, level=level))
    found = find_classes(catalog, search, spec)
    counts = found.counts
    if found.groups:
        groups = Table(title=f"{catalog.group_kind.capitalize() or 'Group'} matching {escape(repr(search))}" if search
                       else catalog.group_kind)
        groups.add_column("id", justify="right")
        groups.add_column(catalog.group_kind or "group")
        groups.add_column("classes (id name)")
        for g in found.groups:
            members = "\n".join(f"{catalog.class_ids[m]} {catalog.class_names[m]}" for m in g.members)
            groups.add_row(str(g.id), escape(g.name), escape(members))
        console.print(groups)
    if found.classes:
        table = Table(title=f"Classes matching {escape(repr(search))}" if search else f"Classes of {escape(spec)}")
        table.add_column("id", justify="right")
        table.add_column("class")
        table.add_column("images listed", justify="right")
        if catalog.group_kind:
            table.add_column(catalog.group_kind)
        for c in found.classes:
            row = [str(catalog.class_ids[c]), escape(catalog.class_names[c]), str(int(counts[c]))]
            if catalog.group_kind:
                row.append(escape(found.group_of.get(c, catalog.class_names[c])))
            table.add_row(*row)
        console.print(table)
    console.print(f"{len(found.classes)} of {count(len(catalog.class_names), 'class')} shown.", highlight=False)


Sets = Annotated[list[str], typer.Option("--set", help="Override a recipe key, e.g. --set generator.lr=2e-4 (repeatable).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and stop.")]


def resolve_recipe(source: str | None, sets: list[str], run_dir: Path | None = None):
    """A recipe with its overrides; ``run_dir`` (--out) comes last, so it wins over ``--set run_dir=``."""
    import dataclasses

    from synthaug.recipe import load_recipe

    resolved = load_recipe(source, sets)
    return resolved if run_dir is None else dataclasses.replace(resolved, run_dir=str(run_dir))


def show_recipe(recipe) -> None:
    """Print the fully resolved recipe, as the run folder will record it."""
    from rich.syntax import Syntax

    from synthaug.recipe import recipe_to_toml

    console.print(Syntax(recipe_to_toml(recipe), "toml", theme="ansi_dark", background_color="default"))


@command("train")
def train_command(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe file or name (default: the embedded digits recipe).")] = None,
    set_: Sets = [],  # noqa: B006 - typer needs a literal default
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: the recipe's run_dir, else runs/<name>).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the run folder's progress and start over.")] = False,
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", help="Train for this many minutes of wall-clock time (summed over resumptions), at most "
        "generator.duration_kimg; the same as --set generator.duration_minutes=N.")] = None,
    dry_run: DryRun = False,
) -> None:
    """Train (or resume) a recipe's conditional diffusion generator in its run folder."""
    if minutes is not None:
        set_ = [*set_, f"generator.duration_minutes={minutes!r}"]
    resolved = resolve_recipe(recipe, set_, run_dir=out)
    if dry_run:
        show_recipe(resolved)
        return
    from synthaug.generator.train import check_run_folder, train_generator  # torch and diffusers: not for a dry run

    check_run_folder(resolved)  # train_generator's first check, before the recipe is printed: a mistake is one line
    show_recipe(resolved)

    run = train_generator(resolved, fresh=fresh)
    info = run.info()
    spent = f" in {info['train_seconds'] / 60:.1f} min" if info.get("train_seconds") else ""
    console.print(f"Trained {run.path}: {info.get('kimg', 0):g} kimg{spent}; EMA weights in {run.ema_dir}", highlight=False,
                  soft_wrap=True)
    if run.latest_grid is not None:  # the grid training wrote (recorded in run.json), never a file it did not write
        console.print(f"Sample grid: {run.latest_grid}", highlight=False, soft_wrap=True)


FROM_RUN = "(default: the run's recipe)"


@command("generate")
def generate_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder for the shards and manifest.")],
    run: Annotated[Optional[Path], typer.Option(help="Trained run folder (default: the latest run that has the classes).")] = None,
    species: Annotated[Optional[str], typer.Option(help="A species (e.g. NABirds \"Allen's Hummingbird\"): its categories, split evenly.")] = None,
    class_: Annotated[Optional[list[str]], typer.Option("--class", help="A class name (repeatable).")] = None,
    attr: Annotated[Optional[list[str]], typer.Option(help="Attribute levels, e.g. bangs=3,smiling=5 (repeatable).")] = None,
    all_classes: Annotated[bool, typer.Option("--all-classes", help="Every class of the run.")] = False,
    num: Annotated[int, typer.Option(help="Images in all, split evenly over the classes (or give --per-class).")] = 0,
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class (or per attribute condition).")] = 0,
    guidance: Annotated[Optional[float], typer.Option(help=f"Classifier-free guidance scale, 1 for none {FROM_RUN}.")] = None,
    sampler: Annotated[Optional[Sampler], typer.Option(help=f"Sampler {FROM_RUN}.")] = None,
    steps: Annotated[Optional[int], typer.Option(help=f"Sampler steps {FROM_RUN}.")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Base seed; each image's seed derives from it {FROM_RUN}.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images in flight; does not change any image {FROM_RUN}.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(help=f"Images per shard {FROM_RUN}.")] = None,
    from_real: Annotated[bool, typer.Option("--from-real", help="Real-guided variations (SDEdit) of the run's own real "
                                            "training images, instead of images from pure noise.")] = False,
    strength: Annotated[Optional[str], typer.Option(
        help=f"With --from-real: how far each real image is noised, in {STRENGTH_RANGE}; a list such as 0.3,0.6 draws a mix.",
        show_default=str(DEFAULT_STRENGTH))] = None,
    min_confidence: Annotated[float, typer.Option("--min-confidence", help="Keep an image only when a classifier trained "
                                                  "on the run's real images gives its class at least this probability "
                                                  "(0: keep all).")] = 0.0,
    max_draws: Annotated[Optional[int], typer.Option("--max-draws", help="With --min-confidence: candidates drawn at most per "
                                                     "image (default 8).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a different generation in --out.")] = False,
) -> None:
    """Draw images from a trained generator into WebDataset shards with a manifest (resumable)."""
    from synthaug.synthesis import write_shards

    try:
        strengths = None if strength is None else tuple(float(v) for v in strength.split(",") if v.strip())
    except ValueError:
        raise SynthaugError(f"--strength {strength!r} is not a number or a list of numbers; write e.g. 0.5 or 0.3,0.6.") from None
    manifest = write_shards(
        run, out, class_, species=species, attributes=attr, all_classes=all_classes, num=num, per_class=per_class,
        guidance=guidance, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, images_per_shard=shard_size,
        from_real=from_real, strength=strengths,
        min_confidence=min_confidence, max_draws=max_draws, overwrite=overwrite,
    )
    console.print(f"{count(manifest['num_samples'], 'image')} in {count(len(manifest['shards']), 'shard')} in {out}",
                  highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("class")
    table.add_column("images", justify="right")
    screened = (manifest.get("filter") or {}).get("per_class", {})
    if screened:
        table.add_column("drawn", justify="right")
        table.add_column("rejected", justify="right")
    for name, n in manifest["per_class"].items():
        extra = [str(screened[name]["drawn"]), str(screened[name]["rejected"])] if name in screened else []
        table.add_row(escape(name), str(n), *extra)
    console.print(table)
    short = {name: c for name, c in screened.items() if c["kept"] < c["planned"]}
    if short:
        shown = ", ".join(f"{name} {c['kept']} of {c['planned']}" for name, c in list(short.items())[:5])
        console.print(f"[yellow]note:[/] {len(short)} class(es) kept fewer images than asked after "
                      f"{manifest['filter']['max_draws']} draws per image "
                      f"({escape(shown)}); lower --min-confidence or raise --max-draws to get more.", highlight=False, soft_wrap=True)
    console.print(f"Manifest: {Path(out) / 'manifest.json'}", highlight=False, soft_wrap=True)


@command("verify")
def verify_command(
    folder: Annotated[Path, typer.Argument(help="A folder written by synthaug generate.")],
) -> None:
    """Check shards against their manifest: missing, extra, corrupt or duplicate samples, sha256, PNGs."""
    from synthaug.shards import verify_shards

    result = verify_shards(folder)
    console.print(f"{folder}: {count(result['shards'], 'shard')}, {count(result['samples'], 'sample')} read.",
                  highlight=False, soft_wrap=True)
    for problem in result["problems"]:
        console.print(f"[red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if result["problems"]:
        fail(f"{count(len(result['problems']), 'problem')} found in {folder}; run the same generate command again to repair "
             "missing or partial shards (add --overwrite to rewrite the set).")
    console.print("[green]OK[/]: every shard and sample matches the manifest.")


def print_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", overflow="fold")  # wrap, never cut a name short
    for row in rows:
        table.add_row(*row)
    console.print(table)


def too_few_sentence(result: dict) -> str:
    """Why an evaluation measured no FID, KID or conditioning accuracy, and what to do: the smallest side."""
    sides = [(result["synthetic_images"], "the synthetic set has", "image", "generate more images into a new folder"),
             (result.get("real_test_images", 2), "the real test split has", "image", "use a dataset or split with more test images"),
             (result.get("generator_train_images", 2), "the run's real training split has", "image", "use a dataset with more training images")]
    n, where, noun, remedy = min(sides, key=lambda side: side[0])
    return (f"FID, KID and conditioning accuracy were not measured: they need at least 2 images on each side, and {where} "
            f"{count(n, noun)}; {remedy}.")


@command("evaluate")
def evaluate_command(
    synthetic: Annotated[Path, typer.Option("--synthetic", help="A folder written by synthaug generate.")],
    data: Annotated[Optional[str], typer.Option(help="Compare with this dataset spec (default: the manifest's dataset).")] = None,
    recipe: Annotated[Optional[str], typer.Option(
        help="Recipe whose \\[benchmark] section sets the classifier and FID options (default: the embedded digits recipe).")] = None,
    set_: Sets = [],  # noqa: B006
) -> None:
    """FID/KID with real-vs-real floors, conditioning accuracy, CAS and (faces) MTCNN for a synthetic set."""
    from synthaug.benchmark import evaluate_synthetic
    from synthaug.recipe import load_recipe
    from synthaug.report import pct

    b = load_recipe(recipe, set_).benchmark
    result = evaluate_synthetic(synthetic, data=data, benchmark=b)
    q = result["quality"]
    rows = []
    if q.get("fid") is not None:
        rows += [
            ["FID vs real test", f"{q['fid']:.2f}", f"{q['floor_fid']:.2f}"],
            ["KID x1000", f"{1000 * q['kid']:.2f} ± {1000 * q['kid_std']:.2f}", f"{1000 * q['floor_kid']:.2f}"],
            ["conditioning accuracy %", pct(q["conditioning"]["accuracy"]), "—"],
        ]
    if result["cas_top1"]:
        rows.append(["CAS top-1 %", f"{pct(result['cas_top1']['mean'])} ± {pct(result['cas_top1']['ci95'])}", "—"])
    if "faces" in q:
        rows.append(["faces detected %", pct(q["faces"]["detection_rate"]), "—"])
        rows.append(["MTCNN confidence", f"{q['faces']['mean_confidence']:.3f}", "—"])
    title = f"{count(result['synthetic_images'], 'synthetic image')} vs {escape(result['dataset'])} (n = {q['n']} per side)"
    if rows:
        print_rows(title, ["measure", "synthetic", "real floor"], rows)
    else:
        console.print(title, highlight=False, soft_wrap=True)
    if q.get("fid") is None:  # fewer than 2 images on a side: nothing to measure, said plainly (not a traceback)
        console.print(f"[yellow]note:[/] {escape(too_few_sentence(result))}", highlight=False, soft_wrap=True)
    judge = result["judge"]
    judges = (q.get("conditioning") or {}).get("judges") or {"full_judge": 1}
    if judges["full_judge"]:
        console.print(f"Conditioning accuracy is judged by a {judge['model']} trained on {judge['trained_on']}; it scores "
                      f"{pct(judge['test_score']['top1'])}% top-1 on the real test split.", highlight=False, soft_wrap=True)
    if judges.get("cross_fitted"):
        console.print(f"The {judges['cross_fitted']} real-guided variations are judged by two cross-fitted {judge['model']}s, "
                      "each trained on half of the real training images and scoring only variations of the other half's, so "
                      "none saw its source; they score " + " and ".join(f"{pct(v)}%" for v in judges["half_judges_test_top1"])
                      + " top-1 on the real test split.", highlight=False, soft_wrap=True)
    if (q.get("memorization") or {}).get("verdict"):
        console.print(f"Memorization: {escape(q['memorization']['verdict'])}", highlight=False, soft_wrap=True)
    console.print(f"Written: {Path(synthetic) / 'evaluation.json'}", highlight=False, soft_wrap=True)


@command("benchmark")
def benchmark_command(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe file or name (default: the embedded digits recipe).")] = None,
    set_: Sets = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: <run folder>/benchmark).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over: forget finished stages and retrain the generators.")] = False,
    dry_run: DryRun = False,
) -> None:
    """Train generators, generate, evaluate, train classifiers on real vs real + synthetic, and report.

    Finished stages (generators, synthetic sets, quality, every classifier run) are kept and reused when the
    command runs again, so a changed setting redoes only what it affects."""
    resolved = resolve_recipe(recipe, set_)
    if dry_run:
        show_recipe(resolved)
        return
    from synthaug.benchmark import run_benchmark
    from synthaug.benchmark.run import check_benchmark_folders
    from synthaug.report import ARM_HEADER, FACES_HEADER, QUALITY_HEADER, answer_lines, arm_rows, has_faces, quality_rows

    check_benchmark_folders(resolved, out)  # run_benchmark's first check, before the recipe is printed: a mistake is one line
    show_recipe(resolved)
    report = run_benchmark(resolved, out=out, fresh=fresh)
    from synthaug.device import process_state

    if not process_state().is_main_process:
        return
    print_rows("Does synthetic data help? top-1 on the real test split", ARM_HEADER, [r for s in report["settings"] for r in arm_rows(s)])
    rows = quality_rows(report)
    header = QUALITY_HEADER + (FACES_HEADER if has_faces(report) else [])
    print_rows("Generator quality (floor: real train vs real test at the same n)", header, rows)
    for line in answer_lines(report):
        if line:
            console.print(escape(line.replace("**", "")), highlight=False, soft_wrap=True)
    folder = out or resolved.run_path / "benchmark"
    console.print(f"Report: {folder / 'report.md'} ({report['total_s']:.0f} s, "
                  f"{count(report['classifiers_trained_this_run'], 'classifier')} trained in this run)", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point."""
    app(prog_name="synthaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
