"""CLI commands for the neuron atlas: ``map``, ``search``, ``diff``, ``export``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from conceptvec.distributed import is_main_process
from conceptvec.errors import AtlasError
from conceptvec.neurons import parse_layers

MODEL_HELP = "Alias (see `conceptvec aliases`), hub id, local folder or .gguf file."
EXPORTS = ("parquet", "neuronpedia", "html")


def _formats(text: str) -> list[str]:
    formats = [f for f in text.replace(" ", "").split(",") if f and f != "none"]
    bad = [f for f in formats if f not in EXPORTS]
    if bad:
        raise AtlasError(f"unknown export {bad[0]!r}; use some of {', '.join(EXPORTS)} or none")
    if "parquet" in formats:  # before any work: pyarrow is an extra
        from conceptvec.atlas.export import require_pyarrow

        require_pyarrow()
    return formats


EXPORT_PATHS = {"parquet": "atlas.parquet", "neuronpedia": "neuronpedia", "html": "html"}
"""Where each export goes inside the atlas folder (``map`` leaves an existing one alone when
it wrote no shard)."""


def _precision(report: Any) -> str:
    """What the projection ran in: the two-pass bf16 path or the compute dtype."""
    if not report.shards_written:
        return "nothing to project"
    if report.precision == "two-pass":
        return "two-pass bf16 with float32 proof"
    return report.dtype


def _auto_export(text: str) -> str:
    """Return ``text``, with ``auto`` made ``parquet`` when pyarrow is installed, else ``none``."""
    if text.strip() != "auto":
        return text
    import importlib.util

    return "parquet" if importlib.util.find_spec("pyarrow") is not None else "none"


def default_out(model: str) -> Path:
    """Return ``atlas-<model>`` in the current folder, with path separators made safe."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", Path(model).name if Path(model).exists() else model)
    return Path(f"atlas-{name.strip('-') or 'model'}")


def run_exports(
    atlas_dir: Path, formats: list[str], out: Path | None = None, overwrite: bool = False
) -> list[Path]:
    """Write each export of ``formats`` for the atlas in ``atlas_dir``; return the paths.

    Exports inside the atlas folder replace earlier exports of ours; an explicit ``out`` that
    exists is replaced only with ``overwrite``, and only if conceptvec wrote it.
    """
    from conceptvec.atlas import Atlas
    from conceptvec.atlas.export import export_neuronpedia, export_parquet

    atlas = Atlas(atlas_dir)
    paths = []
    for f in formats:
        target = out if out is not None and len(formats) == 1 else None
        if target is not None and not overwrite and _occupied(target):
            raise AtlasError(f"{target} exists; pass --overwrite to replace an earlier export")
        if f == "parquet":
            paths.append(export_parquet(atlas, target, overwrite=overwrite))
        elif f == "neuronpedia":
            paths.append(export_neuronpedia(atlas, target, overwrite=overwrite, progress=True))
        else:
            from conceptvec.atlas.html import export_html

            paths.append(export_html(atlas, target or atlas.path / "html", progress=True))
    return paths


def _occupied(path: Path) -> bool:
    """True when ``path`` is a file, a link, or a folder with something in it."""
    path = path.expanduser()
    if path.is_symlink() or path.is_file():
        return True
    return path.is_dir() and any(path.iterdir())


def register(app: typer.Typer) -> None:
    """Add the atlas commands to ``app``."""

    @app.command("map")
    def map_(
        model: Annotated[str, typer.Argument(help=MODEL_HELP)],
        matrices: Annotated[
            str | None,
            typer.Option(help="Comma-separated, e.g. up,down (default: all the model has)."),
        ] = None,
        k: Annotated[int, typer.Option("--k", "-k", min=1, help="Top and bottom tokens.")] = 20,
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Atlas folder (default: atlas-MODEL).")
        ] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        dtype: Annotated[str, typer.Option(help="auto | bfloat16 | float32")] = "auto",
        precision: Annotated[
            str,
            typer.Option(
                help="auto | two-pass | float32: two-pass scores in bf16 and proves the float32 "
                "top and bottom k (same atlas, faster on CPU); auto uses it on CPU where this "
                "machine's float32 GEMMs keep their bits. On a GPU ask for it with --dtype "
                "float32 (not yet measured there)."
            ),
        ] = "auto",
        layers: Annotated[str | None, typer.Option(help="Only these layers, e.g. 0-3,7.")] = None,
        export: Annotated[
            str,
            typer.Option(
                help="Also write: parquet, neuronpedia, html (comma list) or none; auto: "
                "parquet when pyarrow (the parquet extra) is installed."
            ),
        ] = "auto",
        no_fold: Annotated[
            bool, typer.Option("--no-fold", help="Do not fold the final norm into W_U.")
        ] = False,
        overwrite: Annotated[
            bool, typer.Option(help="Replace an atlas made from another model or recipe.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
        corpus: Annotated[
            str | None,
            typer.Option(
                help="Also record what each neuron fires on over this corpus: a text, .jsonl or "
                ".json file, a folder of them, or datasets:NAME[:SPLIT]. MODEL may then be an "
                "existing atlas folder."
            ),
        ] = None,
        text_field: Annotated[str, typer.Option(help="JSON field holding the text.")] = "text",
        exemplars: Annotated[
            int, typer.Option(min=1, help="Top and bottom contexts kept per neuron.")
        ] = 20,
        window: Annotated[int, typer.Option(min=0, help="Context tokens on each side.")] = 8,
        threshold: Annotated[
            float, typer.Option(min=0.0, help="Density: share of tokens beyond +/- this value.")
        ] = 1.0,
        seq_len: Annotated[
            int, typer.Option(min=2, help="Tokens per sequence the model reads (BOS included).")
        ] = 128,
        max_texts: Annotated[
            int | None, typer.Option(min=1, help="Read only the corpus's first N texts.")
        ] = None,
    ) -> None:
        """Decode every MLP neuron through the LM head into a resumable atlas folder.

        With --corpus, also stream a corpus through the model and keep, per neuron, its top
        and bottom contexts, activation density, mean, std and quantiles.
        """
        from conceptvec.atlas import build_atlas

        formats = _formats(_auto_export(export))
        target = out or default_out(model)
        corpus_kw: dict[str, Any] = {}
        if corpus is not None:
            from conceptvec.atlas.corpus import Corpus
            from conceptvec.atlas.exemplars import StatsConfig

            stats = StatsConfig(k=exemplars, window=window, threshold=threshold)
            corpus_kw = dict(
                corpus=Corpus(corpus, text_field),
                corpus_options={"stats": stats, "max_tokens": seq_len, "max_texts": max_texts},
            )
            if (Path(model) / "manifest.json").is_file():  # add to an existing atlas
                from conceptvec.atlas.corpus_pass import add_activations

                if out is not None and out.resolve() != Path(model).resolve():
                    raise AtlasError(
                        f"{model} is an atlas folder: its activation part goes into it; drop --out"
                    )
                done = add_activations(
                    Path(model),
                    corpus_kw["corpus"],
                    layers=parse_layers(layers),
                    overwrite=overwrite,
                    progress=not quiet,
                    **corpus_kw["corpus_options"],
                )
                exported = [str(p) for p in run_exports(Path(model), formats)]
                typer.echo(str(done))
                for p in exported:
                    typer.echo(f"export: {p}")
                return
        try:
            report = build_atlas(
                model,
                target,
                matrices=matrices,
                k=k,
                layers=parse_layers(layers),
                device=device,
                dtype=dtype,
                fold_norm=not no_fold,
                overwrite=overwrite,
                progress=not quiet,
                precision=precision,
                **corpus_kw,
            )
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted; finished shards are kept in {target}. Run the same command "
                "again to resume.",
                err=True,
            )
            raise typer.Exit(130) from None
        if not is_main_process():
            return
        if not report.shards_written and not report.shards_remade:  # nothing new to export
            formats = [f for f in formats if not (target / EXPORT_PATHS[f]).exists()]
        exported = [str(p) for p in run_exports(target, formats)] if report.complete else []
        if json_out:
            from conceptvec.commands import print_json

            print_json({**report.to_dict(), "exports": exported})
            return
        s = report.seconds
        typer.echo(
            f"atlas: {target}  ({len(report.shards_written)} shards written, "
            f"{len(report.shards_reused)} reused; {s['total']:.1f} s, of which projecting "
            f"{s['project']:.1f} s on {report.device} in {_precision(report)})"
        )
        if report.precision == "two-pass":
            tp = report.two_pass
            typer.echo(
                f"two-pass: {tp.neurons - tp.fallback} of {tp.neurons} neurons proved exact "
                f"from bf16 scores, {tp.fallback} redone in float32"
            )
        if report.activations is not None:
            typer.echo(str(report.activations))
        for p in exported:
            typer.echo(f"export: {p}")
        typer.echo(f"search it: conceptvec search {target} WORD")

    @app.command()
    def search(
        model: Annotated[str, typer.Argument(help=MODEL_HELP + " Or an atlas folder.")],
        word: Annotated[
            str | None,
            typer.Argument(help="The token to look for, e.g. dog (none with --by agreement)."),
        ] = None,
        matrix: Annotated[
            str | None,
            typer.Option(
                "--matrix", "-m", help="up | gate | down (default: down; on an atlas, all it has)"
            ),
        ] = None,
        top: Annotated[int, typer.Option("--top", "-n", min=1, help="Neurons to list.")] = 20,
        exact: Annotated[
            bool, typer.Option(help="Match the token text exactly (case and spaces).")
        ] = False,
        bottom: Annotated[bool, typer.Option(help="Search the most negative scores.")] = False,
        both: Annotated[
            bool, typer.Option(help="Search both signs (concepts live in bottom tokens too).")
        ] = False,
        by: Annotated[
            str | None,
            typer.Option(
                help="Weight search ranking: zscore (standard deviations within each neuron's "
                "projection; the default) or score. On an atlas with an activation part: "
                "agreement (no WORD) ranks neurons by how often what they write (or read) is "
                "what they fire on.",
            ),
        ] = None,
        where: Annotated[
            str,
            typer.Option(
                "--in",
                help="On an atlas: tokens (its decoded tokens, the default) or contexts (the "
                "exemplars' contexts from its activation part).",
            ),
        ] = "tokens",
        layers: Annotated[str | None, typer.Option(help="Only these layers, e.g. 20-29.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Rank every neuron by a token's score in its projection (exact, from the weights).

        Given an atlas folder instead of a model, list the neurons whose stored top tokens
        hold the word.
        """
        from conceptvec.commands import print_json

        if (Path(model) / "manifest.json").exists() and (by == "agreement" or where != "tokens"):
            from conceptvec.atlas import Atlas

            _activation_search(Atlas(model), word, by, where, matrix, layers, top, json_out)
            return
        if where != "tokens" or by == "agreement":
            raise AtlasError(
                f"--in {where} and --by agreement search an atlas with an activation part; give "
                "an atlas folder made with `conceptvec map MODEL --corpus SOURCE`"
            )
        if word is None or (not word.strip() and not exact):
            raise AtlasError("the search word is empty; give a word or word piece, e.g. dog")
        if (Path(model) / "manifest.json").exists():
            from conceptvec.atlas import Atlas

            atlas = Atlas(model)
            fix = {"--by": "drop --by", "--both": "search --bottom separately"}
            for flag, given in (("--by", by is not None), ("--both", both)):
                if given:
                    raise AtlasError(
                        f"{flag} applies to the search of a model's weights; an atlas ranks "
                        f"neurons by where the token sits in their stored lists: {fix[flag]}, "
                        f"or search the model ({atlas.model_name}) instead"
                    )
            hits = atlas.search(
                word,
                matrix=matrix,
                top=top,
                exact=exact,
                bottom=bottom,
                layers=parse_layers(layers),
            )
            if json_out:
                print_json({"hits": [h.to_dict() for h in hits]})
            else:
                typer.echo(atlas.search_table(hits) if hits else f"no neuron lists {word!r}")
            return
        from conceptvec.atlas.search import hits_table, search_weights

        side = "both" if both else ("bottom" if bottom else "top")
        kw: dict[str, Any] = dict(
            matrix=matrix or "down",
            top=top,
            side=side,
            layers=parse_layers(layers),
            by=by or "zscore",
            progress=True,  # a bar on stderr; stdout keeps the table or the JSON
        )
        if len(word.split()) > 1:  # a multi-word name: its concept token set
            from conceptvec.concepts.find import search_concept
            from conceptvec.concepts.tokens import concept_tokens
            from conceptvec.models import load

            m = load(model)
            concept = concept_tokens(m, word)
            typer.echo(f"searching {concept}".splitlines()[0] + f" as: {_core_line(concept)}")
            found = search_concept(m, concept, **kw)
        else:
            found = search_weights(model, word, exact=exact, **kw)
        if json_out:
            print_json({"hits": [{"rank": n, **h.to_dict()} for n, h in enumerate(found, 1)]})
        else:
            typer.echo(hits_table(found))

    @app.command()
    def diff(
        atlas_a: Annotated[Path, typer.Argument(help="Atlas folder A (e.g. the base model).")],
        atlas_b: Annotated[Path, typer.Argument(help="Atlas folder B (e.g. instruct/unlearned).")],
        top: Annotated[
            int, typer.Option("--top", "-n", min=0, help="Changed neurons to list.")
        ] = 20,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Compare two atlases: per layer, the share of neurons with the same top-1 token."""
        from conceptvec.atlas.diff import diff_atlases

        result = diff_atlases(atlas_a, atlas_b, top=top)
        if json_out:
            from conceptvec.commands import print_json

            print_json(result.to_dict())
        else:
            typer.echo(str(result))

    @app.command("export")
    def export_(
        atlas_dir: Annotated[Path, typer.Argument(help="An atlas folder from `conceptvec map`.")],
        format: Annotated[
            str, typer.Option("--format", "-f", help="parquet, neuronpedia, html (comma list).")
        ] = "parquet",
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Where to write (one format only).")
        ] = None,
        overwrite: Annotated[
            bool, typer.Option(help="Replace an earlier export of ours at --out.")
        ] = False,
    ) -> None:
        """Export an atlas: Parquet table, Neuronpedia batch-N.jsonl.gz, or an HTML browser."""
        formats = _formats(format)
        if not formats:
            raise AtlasError("nothing to export; give --format parquet, neuronpedia or html")
        if out is not None and len(formats) > 1:
            raise AtlasError("--out works with one --format at a time")
        for p in run_exports(atlas_dir, formats, out, overwrite):
            typer.echo(f"export: {p}")


def _activation_search(atlas, word, by, where, matrix, layers, top, json_out) -> None:
    """``conceptvec search ATLAS --by agreement`` and ``search ATLAS WORD --in contexts``."""
    from conceptvec.atlas.agreement import rank_agreement, search_contexts
    from conceptvec.commands import print_json

    if where not in ("tokens", "contexts"):
        raise AtlasError(f"--in takes tokens or contexts, not {where!r}")
    if by == "agreement":
        if word is not None or where != "tokens":
            raise AtlasError("--by agreement ranks every neuron: drop WORD and --in")
        hits = rank_agreement(atlas, matrix=matrix or "down", layers=layers, top=top)
    else:
        if by is not None:
            raise AtlasError(f"--by {by} does not apply to --in contexts; drop it")
        if word is None:
            raise AtlasError("give the word to look for in the contexts, e.g. Caesar")
        hits = search_contexts(atlas, word, layers=layers, top=top)
    if json_out:
        print_json(hits.to_dict())
    else:
        typer.echo(str(hits))


def _core_line(concept) -> str:
    from conceptvec.tokens import show

    return ", ".join(show(concept.texts[i]) for i in concept.key_ids)
