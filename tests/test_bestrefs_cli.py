"""`crds-fs bestrefs` as a real subprocess: inputs, outputs, exit codes, local and remote.

Core tests build a small observatory (tests.test_engine_core.Rules) in CRDS cache layout,
with a server_config listing a bad reference; shared-data tests check answers against the
crds-computed cases, locally and through a real `crds-fs serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crds_fs.demo import spec
from tests.test_engine_core import Rules

pytestmark = pytest.mark.timeout(120)

CONTEXT = spec.OPERATIONAL_CONTEXT
EXPECTED = {d.file_name: d.expected for d in spec.DATASETS}


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
    assert done.returncode == 1, done.stderr  # the FOO header's lookup failed
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
    assert strict.returncode == 1, strict.stderr
    assert json_lines(strict) == [{"input": str(path), "error": (
        "CrdsBadReferenceError: Recommended reference 'bad_b.fits' of type 'thing' is "
        "designated scientifically invalid.")}]
    allowed = run_cli(*args, "--allow-bad-references")
    assert allowed.returncode == 0, allowed.stderr
    assert json_lines(allowed)[0]["bestrefs"]["thing"] == "bad_b.fits"
    from_env = run_cli(*args, env={"CRDS_ALLOW_BAD_REFERENCES": "1"})
    assert from_env.returncode == 0, from_env.stderr
    assert json_lines(from_env) == json_lines(allowed)


def test_table_output_and_plain_mapping_folder(tiny_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(header()))
    done = run_cli("--context", "tobs_0001.pmap", "--mappings",
                   str(tiny_root / "mappings" / "tobs"), str(path))
    assert done.returncode == 0, done.stderr
    assert f"== {path}" in done.stdout
    assert "thing" in done.stdout and "a_2010.fits" in done.stdout
    assert "never" in done.stdout and "NOT FOUND n/a" in done.stdout


@pytest.mark.parametrize(("content", "name", "label", "fragment"), [
    ('{"INSTRUME": "INST"}\n{not json}\n', "bad.jsonl", "bad.jsonl:2",
     "bad.jsonl:2: invalid JSON"),
    ("[1, 2]", "list.json", "list.json:1", "list.json:1: expected a JSON object"),
    ("{", "trunc.json", "trunc.json", "trunc.json:1: invalid JSON"),
    ("whatever", "notes.txt", "notes.txt", "notes.txt: not a dataset"),
    ("not a fits file at all", "broken.fits", "broken.fits", "broken.fits"),
])
def test_unreadable_inputs_exit_2_and_never_hide_the_others(
        tiny_root: Path, tmp_path: Path, content: str, name: str, label: str,
        fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(header()))
    done = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                   str(path), str(good))
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr and "unreadable (exit status 2)" in done.stderr
    records = {r["input"]: r for r in json_lines(done)}
    bad = records[str(tmp_path / label)]
    assert fragment in bad["error"] and bad["unreadable"] is True and "bestrefs" not in bad
    assert records[str(good)] == {"input": str(good), "bestrefs": {
        "thing": "a_2010.fits", "never": "NOT FOUND n/a"}}
    table = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), str(path),
                    str(good))
    assert table.returncode == 2
    assert f"== {tmp_path / label}" in table.stdout and "UNREADABLE" in table.stdout
    assert f"== {good}" in table.stdout and "a_2010.fits" in table.stdout


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
    # Computing locally with a named context needs no server, even when one is configured.
    local = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                    str(path), env={"CRDS_SERVER_URL": "http://127.0.0.1:9",
                                    "CRDS_FS_RETRIES": "0"})
    assert local.returncode == 0, local.stderr
    assert json_lines(local)[0]["bestrefs"]["thing"] == "a_2010.fits"


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


# --- the demo observatory behind a real `crds-fs serve` (exit statuses, default context) ---


@pytest.fixture
def demo_server(serve: Any, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`crds-fs serve` of the demo, with its datasets for get_dataset_headers_by_id."""
    monkeypatch.setenv("CRDS_FS_DATASETS_INDEX", str(tmp_path / "datasets-index"))
    return serve(demo_root, "--datasets", str(demo_root / "datasets"),
                 "--index", str(tmp_path / "serve-index"))


def test_mix_of_good_unreadable_and_unknown_id_inputs(demo_server: Any, demo_root: Path,
                                                      tmp_path: Path) -> None:
    """Every good answer is printed, each failure is named in its own record, and the exit
    status is the worst that happened: 2 unreadable > 1 lookup failed > 0."""
    env = {"CRDS_SERVER_URL": demo_server.url}
    first, second = (demo_root / "datasets" / d.file_name for d in spec.DATASETS[:2])
    broken = tmp_path / "broken_raw.fits"
    broken.write_bytes(b"this is not FITS" * 100)
    missing = tmp_path / "missing_raw.fits"
    inputs = [str(first), "J9DEMO01Q", "NOSUCH01Q", str(broken), str(missing), str(second)]
    done = run_cli("--context", CONTEXT, "--json", *inputs, env=env)
    assert done.returncode == 2, done.stderr
    records = json_lines(done)
    assert [r["input"] for r in records] == inputs
    assert records[0]["bestrefs"] == EXPECTED[first.name][CONTEXT]
    assert records[1]["bestrefs"] == EXPECTED["j9demo01q_raw.fits"][CONTEXT]
    assert records[5]["bestrefs"] == EXPECTED[second.name][CONTEXT]
    unknown = records[2]
    assert "NOSUCH01Q" in unknown["error"] and "unreadable" not in unknown
    assert "bestrefs" not in unknown
    for record, name in ((records[3], "broken_raw.fits"), (records[4], "missing_raw.fits")):
        assert name in record["error"] and record["unreadable"] is True
        assert name in done.stderr
    assert "3 of 6 answered, 1 lookup(s) failed, 2 unreadable (exit status 2)" in done.stderr

    # Without the unreadable inputs, the unknown ID alone makes it 1; the table names it.
    table = run_cli("--context", CONTEXT, str(first), "NOSUCH01Q", env=env)
    assert table.returncode == 1, table.stderr
    assert "== NOSUCH01Q" in table.stdout and "ERROR DatasetError" in table.stdout
    for reftype, name in EXPECTED[first.name][CONTEXT].items():
        assert f"{reftype}" in table.stdout and name in table.stdout
    assert "1 of 2 answered, 1 lookup(s) failed, 0 unreadable (exit status 1)" in table.stderr

    # All answered: 0, and nothing but the context line on stderr.
    good = run_cli("--context", CONTEXT, "--json", str(first), "J9DEMO01Q", env=env)
    assert good.returncode == 0, good.stderr
    assert [r["bestrefs"] for r in json_lines(good)] == [
        EXPECTED[first.name][CONTEXT], EXPECTED["j9demo01q_raw.fits"][CONTEXT]]
    assert "lookup" not in good.stderr


def test_dataset_ids_locally_need_a_server(demo_server: Any, demo_root: Path) -> None:
    """--mappings computes locally; a dataset ID's header still comes from a server when
    one is named, and without one the ID is an unreadable input."""
    with_server = run_cli("--context", CONTEXT, "--mappings", str(demo_root), "--json",
                          "J9DEMO01Q", env={"CRDS_SERVER_URL": demo_server.url})
    assert with_server.returncode == 0, with_server.stderr
    assert json_lines(with_server)[0]["bestrefs"] == EXPECTED["j9demo01q_raw.fits"][CONTEXT]
    alone = run_cli("--context", CONTEXT, "--mappings", str(demo_root), "--json", "J9DEMO01Q")
    assert alone.returncode == 2
    assert json_lines(alone)[0]["unreadable"] is True and "--server" in alone.stderr


def test_default_context_from_crds_context_and_from_the_server(demo_server: Any,
                                                               demo_root: Path) -> None:
    dataset = demo_root / "datasets" / "i9demo01q_raw.fits"  # bpixtab differs 9000/9001
    env = {"CRDS_SERVER_URL": demo_server.url}
    new = EXPECTED[dataset.name][spec.OPERATIONAL_CONTEXT]
    old = EXPECTED[dataset.name][spec.OLD_CONTEXT]
    assert new != old
    for args in ((), ("--context", "operational"), ("--context", "latest"),
                 ("--context", "hst-operational"), ("--observatory", "hst")):
        done = run_cli(*args, "--json", str(dataset), env=env)
        assert done.returncode == 0, done.stderr
        assert json_lines(done)[0]["bestrefs"] == new, args
        assert (f"context {spec.OPERATIONAL_CONTEXT} (the operational context of "
                f"{demo_server.url})") in done.stderr
    from_env = run_cli("--json", str(dataset), env={**env, "CRDS_CONTEXT": spec.OLD_CONTEXT})
    assert from_env.returncode == 0, from_env.stderr
    assert json_lines(from_env)[0]["bestrefs"] == old
    table = run_cli(str(dataset), env={**env, "CRDS_CONTEXT": spec.OLD_CONTEXT})
    assert f"({spec.OLD_CONTEXT})" in table.stdout
    explicit = run_cli("--context", spec.OPERATIONAL_CONTEXT, "--json", str(dataset),
                       env={**env, "CRDS_CONTEXT": spec.OLD_CONTEXT})
    assert json_lines(explicit)[0]["bestrefs"] == new
    # --observatory names the observatory asked about: one this server lacks is an error.
    wrong = run_cli("--observatory", "jwst", "--json", str(dataset), env=env)
    assert wrong.returncode == 1 and "jwst" in wrong.stderr and wrong.stdout == ""


def test_local_default_context_is_the_folder_s(demo_root: Path, tmp_path: Path) -> None:
    """With --mappings and no server: the operational context recorded in the cache root's
    server_config, else the newest pmap; 'latest' is always the newest."""
    dataset = demo_root / "datasets" / "i9demo01q_raw.fits"
    new = EXPECTED[dataset.name][spec.OPERATIONAL_CONTEXT]
    old = EXPECTED[dataset.name][spec.OLD_CONTEXT]
    root = tmp_path / "root"
    shutil.copytree(demo_root / "mappings", root / "mappings")
    (root / "config" / "hst").mkdir(parents=True)
    (root / "config" / "hst" / "server_config").write_text(
        repr({"operational_context": spec.OLD_CONTEXT, "bad_files_list": []}))
    recorded = run_cli("--mappings", str(root), "--json", str(dataset))
    assert recorded.returncode == 0, recorded.stderr
    assert json_lines(recorded)[0]["bestrefs"] == old
    assert f"context {spec.OLD_CONTEXT} (the operational context in {root})" in recorded.stderr
    latest = run_cli("--mappings", str(root), "--context", "latest", "--json", str(dataset))
    assert json_lines(latest)[0]["bestrefs"] == new
    assert f"context {spec.OPERATIONAL_CONTEXT} (the newest context in" in latest.stderr
    flat = run_cli("--mappings", str(root / "mappings" / "hst"), "--json", str(dataset))
    assert flat.returncode == 0, flat.stderr
    assert json_lines(flat)[0]["bestrefs"] == new  # no server_config: the newest pmap


def test_local_default_context_needs_the_observatory_when_several(tmp_path: Path,
                                                                  tiny_root: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(header()))
    (tiny_root / "mappings" / "hst").mkdir()
    (tiny_root / "mappings" / "hst" / "hst_0001.pmap").write_text("header = {}\n")
    done = run_cli("--mappings", str(tiny_root), str(path))
    assert done.returncode == 1
    assert "--observatory" in done.stderr and "hst, tobs" in done.stderr
    assert done.stdout == ""


def test_cache_option_is_where_references_go(demo_server: Any, demo_root: Path,
                                             tmp_path: Path) -> None:
    dataset = demo_root / "datasets" / spec.DATASETS[0].file_name
    cache = tmp_path / "chosen-cache"
    done = run_cli("--context", CONTEXT, "--cache", str(cache), "--cache-references",
                   "--json", str(dataset), env={"CRDS_SERVER_URL": demo_server.url,
                                                "CRDS_FS_CACHE": str(tmp_path / "other")})
    assert done.returncode == 0, done.stderr
    paths = json_lines(done)[0]["paths"]
    expected = {t: n for t, n in EXPECTED[dataset.name][CONTEXT].items()
                if not n.startswith("NOT FOUND")}
    assert paths == {t: str(cache / "references" / "hst" / n) for t, n in expected.items()}
    assert all(Path(p).is_file() for p in paths.values())
    assert not (tmp_path / "other").exists()


def test_dataset_ids_are_asked_in_batches(demo_server: Any) -> None:
    """IDs go to get_dataset_headers_by_id in batches of max_bestrefs_per_rpc (1000 here):
    1001 IDs cost two calls; every unknown one is named in its own record."""
    unknown = [f"NOSUCH{i:04d}Q" for i in range(1000)]
    done = run_cli("--context", CONTEXT, "--remote", "--json", "J9DEMO01Q", *unknown,
                   env={"CRDS_SERVER_URL": demo_server.url})
    assert done.returncode == 1, done.stderr[-2000:]
    records = json_lines(done)
    assert records[0]["bestrefs"] == EXPECTED["j9demo01q_raw.fits"][CONTEXT]
    assert [r["input"] for r in records[1:]] == unknown
    assert all(r["input"] in r["error"] and "unreadable" not in r for r in records[1:])
    assert demo_server.log().count("get_dataset_headers_by_id") == 2, demo_server.log()[-2000:]


def test_header_file_size_limit(tiny_root: Path, tmp_path: Path) -> None:
    """A .jsonl larger than the limit (1 GiB) is refused unread (a sparse file here)."""
    from crds_fs.cli.bestrefs import _MAX_JSON_BYTES

    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as out:
        out.truncate(_MAX_JSON_BYTES + 1)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(header()))
    done = run_cli("--context", "tobs_0001.pmap", "--mappings", str(tiny_root), "--json",
                   str(huge), str(good))
    assert done.returncode == 2
    records = json_lines(done)
    assert "too large for a header file" in records[0]["error"] and records[0]["unreadable"]
    assert records[1]["bestrefs"]["thing"] == "a_2010.fits"
