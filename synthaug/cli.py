"""The `synthaug` command line: each command parses its options, prints what it will do, and calls
one library function. Mistakes a user can fix end in one sentence and exit code 1.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors
from rich.table import Table

from synthaug import __version__, progress
from synthaug.errors import SynthaugError

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("synthaug")


class OneSentenceErrors(TyperGroup):
    """Usage mistakes (an unknown option, a missing or malformed value) end like every other user
    mistake: one sentence on stderr and exit code 1, instead of click's usage panel and code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except click_errors.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `synthaug` alone prints the help
                sys.exit(0)
            command = " ".join(filter(None, ["synthaug", e.ctx.info_name if e.ctx and e.ctx.parent else None]))
            message = e.format_message().rstrip(".")
            if not standalone_mode:
                raise
            err_console.print(f"[bold red]Error:[/] {message}; see `{command} --help`.", highlight=False, soft_wrap=True)
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
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # e.g. 'synthaug[text]' is not markup
    raise typer.Exit(code)


def command(*args, **kwargs):
    """Register a command whose user mistakes (SynthaugError) print one sentence and exit 1."""

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            try:
                with progress.enabled(err_console):
                    return fn(*a, **k)
            except SynthaugError as e:
                fail(str(e))
            except KeyboardInterrupt:
                fail("Interrupted; files already written are kept, and running the same command again continues.", 130)
            except OSError as e:  # a full disk, a read-only or missing folder: the OS's reason, then what to do
                where = f" {e.filename}" if e.filename else ""
                fail(f"Could not write or read{where}: {e.strerror or e}; free space or choose a writable folder, "
                     "then run the same command again (finished work is kept).")

        return app.command(*args, **kwargs)(wrapper)

    return register


def show_version(value: bool) -> None:
    if value:
        console.print(f"synthaug {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debugging detail.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")] = False,
) -> None:
    """Synthetic training data for image classifiers, and honest numbers on whether it helps."""
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("synthaug")
    root.handlers[:] = [RichHandler(console=err_console, show_path=False, show_time=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


# Dataset options shared by the commands that read a dataset.
Resolution = Annotated[int, typer.Option("--resolution", "-r", help="Square side in pixels (0: the format's default).")]
Target = Annotated[str, typer.Option(help="CelebA: identity or an attribute; CelebA-Dialog: attribute whose level is the class.")]
Level = Annotated[str, typer.Option(help="NABirds: category (leaf visual categories) or species.")]
Split = Annotated[str, typer.Option(help="auto, official or stratified.")]
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
    grid: Annotated[Optional[Path], typer.Option(help="Where to write the sample grid PNG (default: beside the cache).")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many classes (0: all).")] = 30,
) -> None:
    """Decode a dataset (cached) and show its splits, classes, attributes, unreadable files and a sample grid."""
    from synthaug.data import DataConfig, load_dataset
    from synthaug.grids import save_png
    from synthaug.inspection import dataset_grid

    config = DataConfig(spec=spec, resolution=resolution, target=target, level=level, crop=crop, split=split,
                        shots_per_class=shots_per_class, seed=seed, strict=strict)
    ds = load_dataset(config)
    source = f"read from the cache {ds.cache_path}" if ds.from_cache else (
        f"decoded and cached in {ds.cache_path}" if ds.cache_path else "built in, no files")
    console.print(f"[bold]{ds.name}[/]  {config.spec}")
    console.print(
        f"{len(ds)} images, {ds.num_classes} classes, {ds.resolution}x{ds.resolution} px, {ds.channels} channel(s); {source}",
        highlight=False,
    )
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
        table.add_row(str(ds.class_ids[c]), ds.class_names[c], *(str(int(per_split[s][c])) for s in per_split))
    console.print(table)
    if len(shown) < ds.num_classes:
        console.print(f"... {ds.num_classes - len(shown)} more classes (--limit 0 shows all).")

    if ds.attributes is not None:
        attrs = Table(title="Attributes: images per level")
        attrs.add_column("attribute")
        attrs.add_column("levels", justify="right")
        attrs.add_column("count per level (0, 1, ...)")
        for a, (name, levels) in enumerate(zip(ds.attribute_names, ds.attribute_levels)):
            counts = ", ".join(str(int(n)) for n in ds.attribute_counts(a))
            attrs.add_row(name, str(levels), counts)
        console.print(attrs)

    console.print(f"Unreadable files skipped: {len(ds.skipped)}", highlight=False)
    for note in ds.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    path = grid or (ds.cache_path / "grid.png" if ds.cache_path else Path(f"{ds.name}-{ds.resolution}px-grid.png"))
    save_png(dataset_grid(ds), path, min_side=512)
    console.print(f"Sample grid: {path}", highlight=False)


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
    found = find_classes(catalog, search)
    counts = found.counts
    if found.groups:
        groups = Table(title=f"{catalog.group_kind.capitalize() or 'Group'} matching {search!r}" if search else catalog.group_kind)
        groups.add_column("id", justify="right")
        groups.add_column(catalog.group_kind or "group")
        groups.add_column("classes (id name)")
        for g in found.groups:
            members = "\n".join(f"{catalog.class_ids[m]} {catalog.class_names[m]}" for m in g.members)
            groups.add_row(str(g.id), g.name, members)
        console.print(groups)
    if found.classes:
        table = Table(title=f"Classes matching {search!r}" if search else f"Classes of {spec}")
        table.add_column("id", justify="right")
        table.add_column("class")
        table.add_column("images listed", justify="right")
        if catalog.group_kind:
            table.add_column(catalog.group_kind)
        for c in found.classes:
            row = [str(catalog.class_ids[c]), catalog.class_names[c], str(int(counts[c]))]
            if catalog.group_kind:
                row.append(found.group_of.get(c, catalog.class_names[c]))
            table.add_row(*row)
        console.print(table)
    console.print(f"{len(found.classes)} of {len(catalog.class_names)} classes shown.", highlight=False)


Sets = Annotated[list[str], typer.Option("--set", help="Override a recipe key, e.g. --set generator.lr=2e-4 (repeatable).")]


def resolve_recipe(source: str | None, sets: list[str], dry_run: bool):
    """Load a recipe with its overrides and print it resolved; None when this is a dry run."""
    from rich.syntax import Syntax

    from synthaug.recipe import load_recipe, recipe_to_toml

    resolved = load_recipe(source, sets)
    console.print(Syntax(recipe_to_toml(resolved), "toml", theme="ansi_dark", background_color="default"))
    return None if dry_run else resolved


@command("train")
def train_command(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe file or name (default: the embedded digits recipe).")] = None,
    set_: Sets = [],  # noqa: B006 - typer needs a literal default
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the run folder's progress and start over.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and stop.")] = False,
) -> None:
    """Train (or resume) a recipe's conditional diffusion generator in its run folder."""
    from synthaug.generator.train import train_generator

    resolved = resolve_recipe(recipe, set_, dry_run)
    if resolved is None:
        return
    run = train_generator(resolved, fresh=fresh)
    info = run.info()
    grids = sorted(run.grids_dir.glob("*.png"))
    console.print(f"Trained {run.path}: {info.get('kimg', 0):g} kimg; EMA weights in {run.ema_dir}", highlight=False, soft_wrap=True)
    if grids:
        console.print(f"Sample grid: {grids[-1]}", highlight=False, soft_wrap=True)


@command("generate")
def generate_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder for the shards and manifest.")],
    run: Annotated[Optional[Path], typer.Option(help="Trained run folder (default: the latest run that has the classes).")] = None,
    species: Annotated[Optional[str], typer.Option(help="A species (e.g. NABirds \"Allen's Hummingbird\"): its categories, split evenly.")] = None,
    class_: Annotated[Optional[list[str]], typer.Option("--class", help="A class name (repeatable).")] = None,
    attr: Annotated[Optional[list[str]], typer.Option(help="Attribute levels, e.g. bangs=3,smiling=5 (repeatable).")] = None,
    all_classes: Annotated[bool, typer.Option("--all-classes", help="Every class of the run.")] = False,
    num: Annotated[int, typer.Option(help="Images in all, split evenly over the classes.")] = 0,
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class (or per attribute condition).")] = 0,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (1: none).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddpm, ddim, dpm++2m, unipc or euler.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Base seed; each image's seed derives from it.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images in flight (does not change any image).")] = None,
    shard_size: Annotated[Optional[int], typer.Option(help="Images per shard.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a different generation in --out.")] = False,
) -> None:
    """Draw images from a trained generator into WebDataset shards with a manifest (resumable)."""
    from synthaug.synthesis import GenerateRequest, choose_run, generate_shards
    from synthaug.recipe import load_recipe
    from synthaug.runs import open_run

    request = GenerateRequest(classes=tuple(class_ or ()), species=(species,) if species else (),
                              attributes=tuple(attr or ()), all_classes=all_classes, num=num, per_class=per_class)
    if run is None:
        run = choose_run(request)
        log.info("Using the run %s.", run)
    sampling = load_recipe(open_run(run).recipe_file).sampling
    sampling = sampling.replace(guidance=guidance, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                                images_per_shard=shard_size)
    manifest = generate_shards(run, request, out, sampling, overwrite=overwrite)
    console.print(f"{manifest['num_samples']} images in {len(manifest['shards'])} shards in {out}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, n in manifest["per_class"].items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"Manifest: {Path(out) / 'manifest.json'}", highlight=False, soft_wrap=True)


@command("verify")
def verify_command(
    folder: Annotated[Path, typer.Argument(help="A folder written by synthaug generate.")],
) -> None:
    """Check shards against their manifest: missing, extra, corrupt or duplicate samples, sha256, PNGs."""
    from synthaug.shards import verify_shards

    result = verify_shards(folder)
    console.print(f"{folder}: {result['shards']} shards, {result['samples']} samples read.", highlight=False, soft_wrap=True)
    for problem in result["problems"]:
        console.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    if result["problems"]:
        fail(f"{len(result['problems'])} problem(s) found in {folder}; run the same generate command again to repair "
             "missing or partial shards (add --overwrite to rewrite the set).")
    console.print("[green]OK[/]: every shard and sample matches the manifest.")


def print_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@command("evaluate")
def evaluate_command(
    synthetic: Annotated[Path, typer.Option("--synthetic", help="A folder written by synthaug generate.")],
    data: Annotated[Optional[str], typer.Option(help="Compare with this dataset spec instead of the manifest's.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe whose [benchmark] section sets the classifier and FID options.")] = None,
    set_: Sets = [],  # noqa: B006
) -> None:
    """FID/KID with real-vs-real floors, conditioning accuracy, CAS and (faces) MTCNN for a synthetic set."""
    from synthaug.benchmark import evaluate_synthetic
    from synthaug.recipe import load_recipe
    from synthaug.report import pct

    b = load_recipe(recipe, set_).benchmark
    result = evaluate_synthetic(synthetic, data=data, benchmark=b)
    q = result["quality"]
    rows = [
        ["FID vs real test", f"{q['fid']:.2f}", f"{q['floor_fid']:.2f}"],
        ["KID x1000", f"{1000 * q['kid']:.2f} ± {1000 * q['kid_std']:.2f}", f"{1000 * q['floor_kid']:.2f}"],
        ["conditioning accuracy %", pct(q["conditioning"]["accuracy"]), pct(result["judge"]["test_score"]["top1"]) + " (judge on real)"],
    ]
    if result["cas_top1"]:
        rows.append(["CAS top-1 %", f"{pct(result['cas_top1']['mean'])} ± {pct(result['cas_top1']['ci95'])}", "—"])
    if "faces" in q:
        rows.append(["faces detected %", pct(q["faces"]["detection_rate"]), "—"])
        rows.append(["MTCNN confidence", f"{q['faces']['mean_confidence']:.3f}", "—"])
    print_rows(f"{result['synthetic_images']} synthetic vs {result['dataset']} (n = {q['n']} per side)", ["measure", "synthetic", "real floor"], rows)
    console.print(f"Written: {Path(synthetic) / 'evaluation.json'}", highlight=False, soft_wrap=True)


@command("benchmark")
def benchmark_command(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe file or name (default: the embedded digits recipe).")] = None,
    set_: Sets = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: <run folder>/benchmark).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and stop.")] = False,
) -> None:
    """Train generators, generate, evaluate, train classifiers on real vs real + synthetic, and report."""
    from synthaug.benchmark import run_benchmark
    from synthaug.report import ARM_HEADER, QUALITY_HEADER, arm_rows, quality_rows

    resolved = resolve_recipe(recipe, set_, dry_run)
    if resolved is None:
        return
    report = run_benchmark(resolved, out=out)
    print_rows("Does synthetic data help? top-1 on the real test split", ARM_HEADER, [r for s in report["settings"] for r in arm_rows(s)])
    header = QUALITY_HEADER + (["faces %", "MTCNN conf."] if any("faces" in s["quality"] for s in report["settings"]) else [])
    print_rows("Generator quality (floor: real train vs real test at the same n)", header, quality_rows(report))
    folder = out or resolved.run_path / "benchmark"
    console.print(f"Best downstream guidance: {report['guidance_sweep']['best_downstream_guidance']:g}.  "
                  f"Report: {folder / 'report.md'} ({report['total_s']:.0f} s)", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point."""
    app(prog_name="synthaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
