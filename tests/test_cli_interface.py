"""Issue 18, one interface, at the command line: help written for terminals, docs/cli.md covering every subcommand,
one JSON result shape and one table for local, gRPC and serverless searches, --json wherever results or summaries
are printed, reads that create nothing, damaged collections reported by name, and attribute type inference that
refuses to guess."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.cli import COMMANDS, build_parser, main
from shoal.engine import Database

ROOT = Path(__file__).resolve().parent.parent
#: subcommands that print results or a summary (serve and lambda-local are servers and print a status line)
PRINTING = {"build", "search", "info", "repair", "push", "deploy", "demo", "demo-grpc"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ---------------------------------------------------------------------------------------------------- help and docs
@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_is_written_for_terminals(name):
    p = subparsers()[name]
    text = p.format_help()
    for markup in ("``", ":class:", ":mod:", ":func:", ":meth:", ":data:"):
        assert markup not in text, (name, markup)
    assert "Exit status" in text and f"shoal {name}" in text.split("example")[-1], name  # codes and an example
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help and len(action.help) > 8, (name, action.option_strings)  # every option described
        if action.default not in (None, False, [], argparse.SUPPRESS):
            # the default is shown: by the formatter, or in words by the help text itself
            assert "default" in p._get_formatter()._expand_help(action).lower() or \
                "default" in action.help.lower(), (name, action.option_strings)
    assert not any(len(line) > 120 for line in text.splitlines() if not line.startswith("  shoal")), name


def test_long_descriptions_are_whole():
    helps = {name: p.format_help() for name, p in subparsers().items()}
    assert "Runs until Ctrl-C" in helps["lambda-local"]  # was cut off at "Like Lambda:"
    assert "--read-only" in helps["serve"] and "(default: INFO)" in helps["serve"]
    assert "appears twice anywhere in the input is\nrefused" in helps["build"] or "naming both rows" in helps["build"]


def test_docs_cli_documents_every_subcommand():
    doc = (ROOT / "docs" / "cli.md").read_text()
    head = doc.split("\n## ")[0]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in head
    sections = {s.split("\n", 1)[0].strip(): s for s in doc.split("\n## ")[1:]}
    for name in COMMANDS:
        assert name in sections, f"docs/cli.md has no '## {name}' section"
        body = sections[name]
        assert re.search(rf"```bash\n(.*\n)*?shoal {re.escape(name)}\b", body), f"no example of shoal {name}"
        if name in PRINTING:
            assert "--json" in body, name
    assert "appears twice" in sections["build"] and "Ids must be unique" in sections["build"]
    readme = (ROOT / "README.md").read_text()
    for name in COMMANDS:
        assert f"`{name}`" in readme.split("## Documentation")[1].split("\n- ")[3], name


def test_json_on_every_subcommand_that_prints():
    for name, p in subparsers().items():
        has = any("--json" in a.option_strings for a in p._actions)
        assert has == (name in PRINTING), name


# ---------------------------------------------------------------------------------------------------- one shape
@pytest.fixture(scope="module")
def three_ways(tmp_path_factory, kernels_dir):
    """A Flat collection built by the CLI, pushed to a directory, served over gRPC and by the Lambda emulator."""
    from shoal.serverless.emulator import Emulator
    from shoal.server.app import LocalServer

    tmp = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    data = tmp / "data"
    assert main(["build", str(tmp / "x.npy"), "--data", str(data), "--name", "v", "--quiet"]) == 0
    assert main(["push", "--data", str(data), "--name", "v", "--to", str(tmp / "pub"), "--partitions", "3",
                 "--json"]) == 0
    with LocalServer(data) as srv, Emulator(max_workers=6, timeout=60, kernels_dir=kernels_dir) as emu:
        yield {"x": x, "data": data, "pub": tmp / "pub", "server": srv.address, "lambda": emu.url, "tmp": tmp}


def search_argv(env, where: str) -> list[str]:
    if where == "local":
        return ["search", "--data", env["data"], "--name", "v"]
    if where == "grpc":
        return ["search", "--server", env["server"], "--name", "v"]
    return ["search", "--serverless", "shoal", "--lambda-endpoint", env["lambda"], "--index-uri",
            f"file://{env['pub']}", "--depth", "1", "--branching", "2"]


def test_one_json_shape_and_one_table_for_every_way_of_searching(three_ways, capsys):
    env = three_ways
    q = env["x"][:2] + 0.01
    vectors = ["--vector=" + ",".join(f"{v:.6f}" for v in row) for row in q]
    exact = np.argsort(((env["x"][None] - q[:, None]) ** 2).sum(-1), axis=1)[:, :3]
    docs = {}
    for where in ("local", "grpc", "serverless"):
        code, out, err = run(capsys, *search_argv(env, where), *vectors, "-k", "3", "--json")
        assert code == 0, (where, err)
        docs[where] = doc = json.loads(out)
        assert list(doc) == ["collection", "source", "score_kind", "stats", "results"], where
        assert doc["source"]["kind"] == where and doc["score_kind"] == "distance"
        assert list(doc["stats"]) == ["plan", "ndis", "nscanned", "elapsed_ms", "matched", "exact_fallback"]
        assert [r["query"] for r in doc["results"]] == ["vector 0", "vector 1"]
        assert [[h["id"] for h in r["hits"]] for r in doc["results"]] == exact.tolist(), where
        assert all(list(h) == ["id", "score"] for r in doc["results"] for h in r["hits"])
    for where in ("grpc", "serverless"):
        for a, b in zip(docs["local"]["results"], docs[where]["results"]):
            np.testing.assert_allclose([h["score"] for h in a["hits"]], [h["score"] for h in b["hits"]], rtol=1e-5)
    assert docs["serverless"]["collection"] is None and docs["serverless"]["source"]["version"]
    # the tables: a header per query, one closing line, "1 query" / "2 queries", "1 result"
    for where in ("local", "grpc", "serverless"):
        code, out, err = run(capsys, *search_argv(env, where), vectors[0], "-k", "1")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "vector 0: 1 result"
        assert lines[1].split() == ["rank", "id", "distance"]
        assert re.search(r"ms for 1 query\)$", lines[-1]), lines[-1]
        code, out, _ = run(capsys, *search_argv(env, where), *vectors, "-k", "2")
        assert out.count("rank") == 2 and out.rstrip().endswith("for 2 queries)") and "queries)" in out
    code, out, _ = run(capsys, *search_argv(env, "serverless"), vectors[0], "-k", "1", "--stats")
    assert "invocations " in out and "per 1,000 queries" in out
    # attributes through gRPC, the same keys as locally
    code, out, _ = run(capsys, *search_argv(env, "grpc"), "--ids", "4", "-k", "2", "--attrs", "--json")
    assert code == 0 and [h["attrs"] for h in json.loads(out)["results"][0]["hits"]] == [{}, {}]


def test_push_prints_a_summary_or_json(three_ways, capsys):
    env = three_ways
    code, out, err = run(capsys, "push", "--data", env["data"], "--name", "v", "--to", env["tmp"] / "pub2",
                         "--partitions", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["collection"] == "v" and doc["count"] == 300 and doc["partitions"] == 2 and doc["kind"] == "flat"
    code, out, _ = run(capsys, "push", "--data", env["data"], "--name", "v", "--to", env["tmp"] / "pub2")
    assert code == 0 and "with 8 partitions" in out and doc["version"] not in out  # a new version each time


def test_searching_the_wrong_place_creates_nothing(three_ways, capsys, tmp_path):
    env = three_ways
    typo = tmp_path / "typo"
    code, _, err = run(capsys, "search", "--data", typo, "--name", "v", "--ids", "1")
    assert code == 2 and "does not exist" in err and not typo.exists()
    code, _, err = run(capsys, "info", "--data", typo)
    assert code == 2 and not typo.exists()
    code, _, err = run(capsys, "search", "--serverless", "shoal", "--lambda-endpoint", env["lambda"],
                       "--index-uri", f"file://{typo}", "--vector", ",".join(["0.1"] * 8), "-k", "1")
    assert code in (1, 2) and "no partitioned index" in err and not typo.exists(), err


def test_conflicting_search_modes_are_refused(three_ways, capsys):
    env = three_ways
    cases = [
        (["search", "--serverless", "shoal", "--ids", "1"], "a serverless index is searched by vector only"),
        (["search", "--serverless", "shoal", "--data", env["data"], "--vector", "1,2"], "--data cannot be used"),
        (["search", "--serverless", "shoal", "--tenant", "t", "--vector", "1,2"], "--tenant cannot be used"),
        (["search", "--server", env["server"], "--vector", "1,2"], "needs --name"),
        (["search", "--server", env["server"], "--data", env["data"], "--name", "v", "--vector", "1"], "--data"),
        (["search", "--vector", "1,2"], "required: --data, --name"),
        (["search", "--data", env["data"], "--name", "v", "--vector", "1,2", "--vector", "1"], "different lengths"),
    ]
    for argv, needle in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)


# ---------------------------------------------------------------------------------------------------- info
def test_info_reports_a_damaged_collection_and_lists_the_others(tmp_path, capsys):
    db = Database(tmp_path / "d")
    for name in ("a", "b", "c"):
        db.create_collection(name, dim=2).upsert([1], [[0.0, 1.0]])
    db.close()
    (tmp_path / "d" / "b" / "MANIFEST").write_text("{broken")
    code, out, err = run(capsys, "info", "--data", tmp_path / "d")
    assert code == 1
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["a", "b", "c"]
    assert "cannot be read" in out and "b/MANIFEST is damaged" in err and "collection 'b'" in err
    code, out, err = run(capsys, "info", "--data", tmp_path / "d", "--json")
    doc = json.loads(out)
    assert code == 1 and [d["name"] for d in doc] == ["a", "b", "c"] and "MANIFEST is damaged" in doc[1]["error"]
    assert doc[0]["count"] == 1 and doc[2]["count"] == 1
    code, _, err = run(capsys, "info", "--data", tmp_path / "d", "--name", "b")
    assert code == 2 and "b/MANIFEST is damaged" in err


def test_unexpected_errors_are_one_line_unless_traceback(monkeypatch, capsys, tmp_path):
    import shoal.cli.collection as collection

    def boom(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(collection, "cmd_info", boom)
    code, _, err = run(capsys, "info", "--data", tmp_path)
    assert code == 1 and err.strip() == "shoal info: error: RuntimeError: boom"
    code, _, err = run(capsys, "--traceback", "info", "--data", tmp_path)
    assert code == 1 and "Traceback (most recent call last)" in err


# ---------------------------------------------------------------------------------------------------- inference
@pytest.fixture
def vecs(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32))
    return path


def write_csv(path: Path, prices: list[str]) -> Path:
    path.write_text("price,color\n" + "".join(f"{p},{('red', 'blue')[i % 2]}\n" for i, p in enumerate(prices)))
    return path


@pytest.mark.parametrize("bad", ["abc", "NA", "n/a", "nan"])
def test_a_few_odd_values_do_not_turn_a_numeric_column_into_text(tmp_path, vecs, capsys, bad):
    prices = [f"{i}.5" for i in range(40)]
    prices[17] = bad
    attrs = write_csv(tmp_path / "attrs.csv", prices)
    data = tmp_path / "data"
    code, _, err = run(capsys, "build", vecs, "--attrs", attrs, "--data", data, "--name", "v", "--quiet")
    assert code == 2, err
    assert "column 'price'" in err and "row 17" in err and repr(bad) in err and "39 of 40 values are numbers" in err
    assert "--schema price:keyword" in err and not (data / "v").exists()
    code, out, err = run(capsys, "build", vecs, "--attrs", attrs, "--data", data, "--name", "v", "--quiet",
                         "--schema", "price:keyword", "--json")
    assert code == 0 and json.loads(out)["schema"]["price"] == "keyword", err
    code, _, err = run(capsys, "build", vecs, "--attrs", attrs, "--data", data, "--name", "w", "--quiet",
                       "--schema", "price:float")
    if bad == "nan":  # said to be a float, "nan" is a float: the missing value
        assert code == 0, err
    else:
        assert code == 2 and "row 17" in err and repr(bad) in err and "not a valid float" in err


def test_text_columns_and_empty_cells_are_not_refused(tmp_path, vecs, capsys):
    sizes = ["S", "M", "L", "XL"] * 9 + ["10", "12", "14", "16"]  # mostly text, a few numbers: keyword
    (tmp_path / "a.csv").write_text("size,price\n" + "".join(f"{s},{'' if i == 3 else i}\n"
                                                             for i, s in enumerate(sizes)))
    code, out, err = run(capsys, "build", vecs, "--attrs", tmp_path / "a.csv", "--data", tmp_path / "d", "--name",
                         "v", "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["schema"] == {"size": "keyword", "price": "int"}  # an empty cell is a missing value


def test_jsonl_mixed_types_name_the_row_and_value(tmp_path, vecs, capsys):
    rows = [{"price": i + 0.5} for i in range(40)]
    rows[23] = {"price": "cheap"}
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, "build", vecs, "--attrs", tmp_path / "a.jsonl", "--data", tmp_path / "d", "--name",
                       "v", "--quiet")
    assert code == 2 and "attribute 'price'" in err and "row 23" in err and "'cheap'" in err, err
    assert "39 values are numbers" in err and "--schema price:TYPE" in err


# ---------------------------------------------------------------------------------------------------- demos
def synthetic_words(monkeypatch, n_extra=300):
    import shoal.cli.demo as demo

    rng = np.random.default_rng(1)
    words = ["the", "king", "queen", "paris", "london", "lyon", "computer", "laptop"] + \
        [f"w{i}" for i in range(n_extra)]
    x = rng.standard_normal((len(words), 50)).astype(np.float32)
    x[2] = x[1] + 0.05
    monkeypatch.setattr(demo, "load_glove", lambda limit=None: (x[:limit], words[:limit]))
    return words


def test_demo_json_holds_search_documents(tmp_path, monkeypatch, capsys):
    words = synthetic_words(monkeypatch)
    code, out, err = run(capsys, "demo", "--data", tmp_path / "demo", "--limit", len(words), "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout holds the JSON document alone; the narration went to stderr
    assert "nearest to 'king'" in err and doc["built"]["count"] == len(words) and doc["batch"]["queries"] > 0
    first = doc["searches"][0]
    assert list(first) == ["collection", "source", "score_kind", "stats", "results"]
    assert first["results"][0]["query"] == "nearest to 'king'"
    assert first["results"][0]["hits"][0]["attrs"]["word"] == "queen"


def test_demo_grpc_json(tmp_path, monkeypatch, capsys):
    from shoal.cli.demo_grpc import run_grpc_demo

    words = synthetic_words(monkeypatch, 2000)
    assert run_grpc_demo(str(tmp_path / "demo"), limit=len(words), as_json=True) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["server_exit_status"] == 0 and doc["upsert"]["rows"] == len(words) and "listening on" in err
    by_label = {s["results"][0]["query"]: s for s in doc["searches"]}
    king = by_label["nearest to 'king' in tenant 'common'"]
    assert king["source"]["kind"] == "grpc" and king["results"][0]["hits"][0]["attrs"] == {"word": "queen"}
    assert king["source"]["round_trip_ms"] > 0


def test_console_entry_point_runs_as_a_module(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "shoal.cli", "search", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--server HOST:PORT" in r.stdout and "--serverless FUNCTION" in r.stdout
