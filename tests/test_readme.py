"""The README, as a new user follows it: the embedded Python example runs twice with the output it shows, and the
tour's commands (build, search, serve + client, push + lambda-local + serverless search) run once in an empty
directory with the virtualenv's ``shoal`` on PATH. Ports are the README's, swapped for free ones."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(section: str) -> list[tuple[str, str]]:
    """``(language, code)`` of the fenced blocks of a README section (up to the next ``## `` heading)."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)


def run_python(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    return out.getvalue()


def expected_output(code: str) -> list[str]:
    """The ``# ...`` comments of the ``print(...)`` lines: what the README says they print."""
    return [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.strip().startswith("print(")]


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(script: str, cwd: Path, env: dict, timeout: float = 300) -> str:
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{script}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def test_embedded_example_runs_twice_with_the_output_shown(tmp_path, monkeypatch):
    (lang, code), = blocks("Using it from Python (embedded)")
    assert lang == "python" and "exist_ok=True" in code
    monkeypatch.chdir(tmp_path)
    want = expected_output(code)
    assert len(want) == 2
    for _ in range(2):  # the second run finds the collection and replaces the same ids
        got = run_python(code).splitlines()
        assert [squash(g) for g in got] == [squash(w) for w in want]


def test_readme_mentions_activation_and_first_call_compilation():
    tour = blocks("A tour of the front ends")
    assert "source .venv/bin/activate" in tour[0][1]
    text = README.split("## Using it from Python (embedded)")[1].split("## A tour")[0]
    assert "numba" in text and "cached" in text and "NUMBA_CACHE_DIR" in text


def test_tour_commands_run_in_an_empty_directory(tmp_path):
    tour = blocks("A tour of the front ends")
    langs = [lang for lang, _ in tour]
    assert langs == ["bash", "bash", "bash", "python", "bash", "bash"], langs
    setup, files_and_cli, serve, client, remote_search, serverless = (code for _, code in tour)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # what `source .venv/bin/activate` does
    env.pop("SHOAL_S3_ENDPOINT", None)
    work = tmp_path / "tour"
    work.mkdir()

    out = sh(files_and_cli, work, env)
    assert "built 'docs': 20,000 vectors" in out and "built 'small'" in out
    assert "id 7: 3 results" in out and "attributes" in out
    assert '"score_kind": "distance"' in out and "docs" in out.split("name")[-1]

    port = free_port()
    serve_cmd = serve.strip().replace("50051", str(port))
    assert serve_cmd.startswith("shoal serve --data data")
    server = subprocess.Popen(["bash", "-c", "exec " + serve_cmd], cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        import shoal

        with shoal.Client(f"127.0.0.1:{port}", timeout=120) as c:
            c.wait_until_serving(120)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            got = run_python(client.replace("50051", str(port)))
        finally:
            os.chdir(cwd)
        assert squash(got) == squash(expected_output(client)[0])
        out = sh(remote_search.replace("50051", str(port)), work, env)
        # one table header per query (the closing line may name calibrated settings such as rerank=20)
        headers = sum(line.split()[:1] == ["rank"] for line in out.splitlines())
        assert headers == 3 and "price" in out and out.rstrip().endswith("for 3 queries)")
    finally:
        server.terminate()
        assert server.wait(60) == 0, server.stdout.read()

    lam = free_port()
    script = "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + serverless.replace("9001", str(lam))
    out = sh(script, work, env)
    assert "query 2: 3 results" in out and "index version" in out and "invocations " in out
