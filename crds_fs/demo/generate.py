"""Generate the demo observatory: a small, well-formed HST-like CRDS cache on disk.

The result is a folder in CRDS cache layout (``CRDS_PATH``) that the real crds client,
``crds-fs serve`` and the tests all accept as is:

    ROOT/mappings/hst/       2 pmaps, 5 imaps, 11 rmaps (header sha1sums correct)
    ROOT/references/hst/     32 FITS references, tens of KB each plus two big images
    ROOT/config/hst/         server_config (Python literal), bad_files.txt,
                             ref_cache_subdir_mode ("flat")
    ROOT/datasets/           7 raw exposures whose headers select known references
    ROOT/demo-info.json      the intended best references of every dataset, per context

What it contains and why is described in ``crds_fs.demo.spec``.
"""

from __future__ import annotations

import json
import pprint
from dataclasses import dataclass, field
from pathlib import Path

from ..progress import Progress, report
from . import spec
from .fitsfiles import write_dataset, write_reference
from .mappings import render_imap, render_pmap, render_rmap

#: Fixed so that equal seeds give byte-identical trees.
LAST_SYNCED = "2024-01-15 12:00:00.000000"
CONTEXT_DATES = {spec.OLD_CONTEXT: "2024-01-01 09:00:00", spec.OPERATIONAL_CONTEXT:
                 "2024-01-15 09:00:00"}
INFO_FILE = "demo-info.json"


@dataclass(frozen=True)
class DemoInfo:
    """What `generate` wrote, and what each dataset should get as best references."""

    root: Path
    observatory: str
    #: the operational context (``hst_9001.pmap``)
    context: str
    #: every context, oldest first
    contexts: tuple[str, ...]
    mappings: tuple[str, ...]
    references: tuple[str, ...]
    datasets: tuple[Path, ...]
    bad_files: tuple[str, ...]
    #: dataset file name -> context -> {reftype: reference name or "NOT FOUND ..."}
    expected: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def mapping_dir(self) -> Path:
        return self.root / "mappings" / self.observatory

    @property
    def reference_dir(self) -> Path:
        return self.root / "references" / self.observatory

    @property
    def config_dir(self) -> Path:
        return self.root / "config" / self.observatory

    @property
    def dataset_dir(self) -> Path:
        return self.root / "datasets"

    def expected_for(self, dataset: str | Path, context: str | None = None) -> dict[str, str]:
        """Intended best references of *dataset* (file name or path) under *context*."""
        return self.expected[Path(dataset).name][context or self.context]


def generate(root: Path, *, large_mb: int = 24, seed: int = 0,
             progress: Progress | None = None) -> DemoInfo:
    """Write the demo observatory under *root* (created if needed; files are overwritten).

    *large_mb* is the size of the biggest reference (the ACS WFC F606W flat); the 2016 ACS
    WFC dark is half of it and every other reference is tens of KB.  The same *seed* always
    gives byte-identical files.  Takes about a second for the default 24 MB (a GB takes
    seconds: *progress*, see `crds_fs.progress`, hears of each reference and dataset).
    """
    if large_mb < 1:
        raise ValueError(f"large_mb must be at least 1, not {large_mb}")
    root = Path(root)
    info = _info(root)
    for folder in (info.mapping_dir, info.reference_dir, info.config_dir, info.dataset_dir):
        folder.mkdir(parents=True, exist_ok=True)
    _write_mappings(info.mapping_dir)
    total = len(spec.REFERENCES) + len(spec.DATASETS)
    report(progress, 0, total)
    for done, ref in enumerate(spec.REFERENCES, start=1):
        write_reference(info.reference_dir / ref.name, ref, seed=seed, large_mb=large_mb)
        report(progress, done, total, ref.name)
    for done, dataset in enumerate(spec.DATASETS, start=len(spec.REFERENCES) + 1):
        write_dataset(info.dataset_dir / dataset.file_name, dataset, seed=seed)
        report(progress, done, total, dataset.file_name)
    _write_config(info)
    _write_text(root / INFO_FILE, json.dumps(_info_json(info, large_mb, seed), indent=2) + "\n")
    return info


def _info(root: Path) -> DemoInfo:
    mappings = sorted(
        [p.name for p in spec.PMAPS] + [i.name for i in spec.IMAPS] + [r.name for r in spec.RMAPS]
    )
    return DemoInfo(
        root=root,
        observatory=spec.OBSERVATORY,
        context=spec.OPERATIONAL_CONTEXT,
        contexts=spec.CONTEXTS,
        mappings=tuple(mappings),
        references=tuple(sorted(ref.name for ref in spec.REFERENCES)),
        datasets=tuple(root / "datasets" / d.file_name for d in spec.DATASETS),
        bad_files=spec.BAD_FILES,
        expected={d.file_name: {ctx: dict(answers) for ctx, answers in d.expected.items()}
                  for d in spec.DATASETS},
    )


def _write_mappings(folder: Path) -> None:
    for pmap in spec.PMAPS:
        _write_text(folder / pmap.name, render_pmap(pmap))
    for imap in spec.IMAPS:
        _write_text(folder / imap.name, render_imap(imap))
    for rmap in spec.RMAPS:
        _write_text(folder / rmap.name, render_rmap(rmap))


def server_config(info: DemoInfo) -> dict:
    """The cached server info crds reads offline (crds-reference 3.3), without URLs:
    whoever serves the folder advertises its own download locations."""
    history = [[CONTEXT_DATES[ctx], ctx, _pmap(ctx).description]
               for ctx in reversed(info.contexts)]
    return {
        "bad_files_list": list(info.bad_files),
        "context_history": history,
        "edit_context": info.context,
        "force_remote_mode": 0,
        "last_synced": LAST_SYNCED,
        "mappings": list(info.mappings),
        "observatory": info.observatory,
        "operational_context": info.context,
        "versions_context": "",
    }


def _pmap(name: str) -> spec.Pmap:
    return next(p for p in spec.PMAPS if p.name == name)


def _write_config(info: DemoInfo) -> None:
    _write_text(info.config_dir / "server_config", pprint.pformat(server_config(info)) + "\n")
    _write_text(info.config_dir / "bad_files.txt", "".join(f"{n}\n" for n in info.bad_files))
    _write_text(info.config_dir / "ref_cache_subdir_mode", "flat\n")


def _info_json(info: DemoInfo, large_mb: int, seed: int) -> dict:
    return {
        "observatory": info.observatory,
        "operational_context": info.context,
        "contexts": list(info.contexts),
        "bad_files": list(info.bad_files),
        "large_mb": large_mb,
        "seed": seed,
        "datasets": {
            d.file_name: {"note": d.note, "expected": d.expected} for d in spec.DATASETS
        },
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
