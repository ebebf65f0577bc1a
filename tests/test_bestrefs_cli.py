"""`crds-fs bestrefs` as a real subprocess: inputs, outputs, exit codes, local and remote.

Core tests build a small observatory (tests.test_engine_core.Rules) in CRDS cache layout,
with a server_config listing a bad reference; shared-data tests check answers against the
crds-computed cases, locally and through a real `crds-fs serve`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_engine_core import Rules

pytestmark = pytest.mark.timeout(120)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", "bestrefs", *args],
                          capture_output=True, text=True, timeout=100, env=full_env,
                          check=False)


def json_lines(done: subprocess.CompletedProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A CRDS cache root for 'tobs' with one instrument and a bad-files list."""
    rules = Rules()
    rules.rmap("inst", "thing", (("MODE",), ("DATE-OBS", "TIME-OBS")), """Match({
        'A' : UseAfter({
            '2000-01-01 00:00:00' : 'a_2000.fits',
            '2010-01-01 00:00:00' : 'a_2010.fits',
        }),
        'B' : UseAfter({'2000-01-01 00:00:00' : 'bad_b.fits'}),
    })""")
    rules.special("inst", "never", "N/A")
    rules.context()
    root = tmp_path / "root"
    (root / "mappings" / "tobs").mkdir(parents=True)
    (root / "config" / "tobs").mkdir(parents=True)
    for name, text in rules.texts.items():
        (root / "mappings" / "tobs" / name).write_text(text)
    (root / "config" / "tobs" / "server_config").write_text(
        repr({"bad_files_list": ["bad_b.fits"], "observatory": "tobs"}))
    return root


def header(mode: str = "A", date: str = "2012-05-01") -> dict[str, str]:
    return {"INSTRUME": "INST", "MODE": mode, "DATE-OBS": date, "TIME-OBS": "00:00:00"}


def test_jsonl_json_and_header_objects(tiny_root: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "headers.jsonl"
    jsonl.write_text("\n".join([json.dumps(header()), "",
                                json.dumps({"header": header(date="2005-01-01")}),
                                json.dumps({**header(), "INSTRUME": "FOO"})]) + "\n")
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"header": header()}))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([header(), header(date="1999-01-01")]))
    done = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                   str(jsonl), str(single), str(many))
    assert done.returncode == 0, done.stderr
    records = json_lines(done)
    assert [r["input"] for r in records] == [
        f"{jsonl}:1", f"{jsonl}:3", f"{jsonl}:4", str(single), f"{many}:1", f"{many}:2"]
    assert records[0]["bestrefs"] == {"thing": "a_2010.fits", "never": "NOT FOUND n/a"}
    assert records[1]["bestrefs"]["thing"] == "a_2000.fits"
    assert records[2] == {"input": f"{jsonl}:4", "error": "CrdsUnknownInstrumentError: "
                          "Unknown instrument 'foo' for context 'tobs_0001.pmap'"}
    assert records[3]["bestrefs"] == records[0]["bestrefs"]
    assert records[5]["bestrefs"]["thing"] == "NOT FOUND No match found."


def test_bad_references_fail_the_header_unless_allowed(tiny_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(header("B")))
    args = ("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json", str(path))
    strict = run_cli(*args)
    assert strict.returncode == 0, strict.stderr
    assert json_lines(strict) == [{"input": str(path), "error": (
        "CrdsBadReferenceError: Recommended reference 'bad_b.fits' of type 'thing' is "
        "designated scientifically invalid.")}]
    allowed = run_cli(*args, "--allow-bad-references")
    assert json_lines(allowed)[0]["bestrefs"]["thing"] == "bad_b.fits"


def test_table_output_and_plain_mapping_folder(tiny_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(header()))
    done = run_cli("--context", "tobs_0001.pmap", "--mappings",
                   str(tiny_root / "mappings" / "tobs"), str(path))
    assert done.returncode == 0, done.stderr
    assert f"== {path}" in done.stdout
    assert "thing" in done.stdout and "a_2010.fits" in done.stdout
    assert "never" in done.stdout and "NOT FOUND n/a" in done.stdout


@pytest.mark.parametrize(("content", "name", "fragment"), [
    ('{"INSTRUME": "INST"}\n{not json}\n', "bad.jsonl", "bad.jsonl:2: invalid JSON"),
    ("[1, 2]", "list.json", "list.json:1: expected a JSON object"),
    ("{", "trunc.json", "trunc.json:1: invalid JSON"),
    ("whatever", "notes.txt", "notes.txt: not a dataset"),
    ("not a fits file at all", "broken.fits", "broken.fits"),
])
def test_unreadable_inputs_exit_2(tiny_root: Path, tmp_path: Path, content: str, name: str,
                                  fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    done = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                   str(path))
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr
    assert done.stdout == ""


def test_missing_input_and_other_failures(tiny_root: Path, tmp_path: Path) -> None:
    missing = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root),
                      str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "nope.json" in missing.stderr
    path = tmp_path / "h.json"
    path.write_text(json.dumps(header()))
    no_context = run_cli("--context", "tobs_0999.pmap", "--mappings", str(tiny_root), str(path))
    assert no_context.returncode == 1
    assert "tobs_0999.pmap" in no_context.stderr
    unreachable = run_cli("--context", "tobs_0001.pmap", "--remote", "--server",
                          "http://127.0.0.1:9", str(path), env={"CRDS_FS_RETRIES": "0"})
    assert unreachable.returncode == 1
    assert "127.0.0.1:9" in unreachable.stderr


def test_fits_dataset_reads_headers_only(tiny_root: Path, tmp_path: Path) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    import numpy as np

    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = "INST"
    primary.header["DATE-OBS"] = "2012-05-01"
    primary.header["TIME-OBS"] = "00:00:00"
    science = fits.ImageHDU(np.zeros((64, 64), dtype="f4"))
    science.header["MODE"] = "A"
    path = tmp_path / "j8xx01abq_raw.fits"
    fits.HDUList([primary, science]).writeto(path)
    done = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                   str(path))
    assert done.returncode == 0, done.stderr
    assert json_lines(done) == [{"input": str(path),
                                 "bestrefs": {"thing": "a_2010.fits", "never": "NOT FOUND n/a"}}]


@pytest.mark.shared
def test_shared_cases_local_and_remote_agree_with_crds(shared_data: Path, serve: Any,
                                                       tmp_path: Path) -> None:
    cases = []
    with open(shared_data / "cases" / "hst_0729.jsonl", encoding="utf-8") as lines:
        for _ in range(40):
            cases.append(json.loads(next(lines)))
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(case) + "\n" for case in cases))
    local = run_cli("--context", "hst_0729.pmap", "--mappings", str(shared_data), "--json",
                    str(path))
    assert local.returncode == 0, local.stderr
    assert [r["bestrefs"] for r in json_lines(local)] == [c["expected"] for c in cases]
    server = serve(shared_data, "--index", str(tmp_path / "index"))
    remote = run_cli("--context", "hst_0729.pmap", "--server", server.url, "--json", str(path))
    assert remote.returncode == 0, remote.stderr + server.log()[-2000:]
    assert json_lines(remote) == json_lines(local)
    env_remote = run_cli("--context", "hst_0729.pmap", "--json", str(path),
                         env={"CRDS_SERVER_URL": server.url})
    assert json_lines(env_remote) == json_lines(local)


@pytest.mark.shared
def test_jwst_asdf_and_fits_keyword_headers(shared_data: Path, tmp_path: Path) -> None:
    with open(shared_data / "cases" / "jwst_0541.jsonl", encoding="utf-8") as lines:
        case = json.loads(next(lines))
    inputs = [tmp_path / "model.json"]
    inputs[0].write_text(json.dumps(case["header"]))
    asdf = pytest.importorskip("asdf")
    tree: dict[str, Any] = {}
    for key, value in case["header"].items():
        node = tree
        parts = key.lower().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    asdf_path = tmp_path / "jw00001001001_01101_00001_nrs1_uncal.asdf"
    asdf.AsdfFile(tree).write_to(asdf_path)
    inputs.append(asdf_path)
    done = run_cli("--context", "jwst_0541.pmap", "--mappings", str(shared_data), "--json",
                   *map(str, inputs))
    assert done.returncode == 0, done.stderr
    records = json_lines(done)
    assert [r.get("bestrefs") for r in records] == [case["expected"]] * 2


def test_remote_batches_by_max_bestrefs_per_rpc(tiny_root: Path, tmp_path: Path,
                                                serve: Any) -> None:
    server = serve(tiny_root, "--index", str(tmp_path / "index"))
    headers = [header(mode="A", date=f"20{i % 20:02d}-01-01") for i in range(2100)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(h) + "\n" for h in headers))
    remote = run_cli("--context", "tobs_0001.pmap", "--remote", "--server", server.url,
                     "--json", str(path))
    assert remote.returncode == 0, remote.stderr + server.log()[-2000:]
    local = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                    str(path))
    assert json_lines(remote) == json_lines(local)
    assert len(json_lines(remote)) == 2100
    calls = server.log().count("get_best_references_by_header_map")
    assert calls == 3, server.log()[-3000:]  # max_bestrefs_per_rpc = 1000 -> 1000+1000+100
