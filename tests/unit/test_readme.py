"""The README's promises: its set-up commands match CI, and its plug-in example works."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from simulator.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(commands) == 2
    install_quickstart, install_tests = commands
    assert "pip install ." in install_quickstart and "ldsim run experiments/quickstart.yaml" in install_quickstart
    install = "pip install torch==2.13.0 && pip install -e '.[dev]'"
    assert install_tests.endswith(f"{install} && pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and re.search(r"&& pytest\s*$", ci.strip())


def test_readme_plugin_example_runs_and_orders_the_queue(tmp_path, monkeypatch):
    plugin = next(b for b in _blocks("python") if "class ShortestFirst" in b)
    (tmp_path / "my_sched.py").write_text(plugin)
    snippet = next(b for b in _blocks("yaml") if "my_sched:ShortestFirst" in b)
    scheduling = re.search(r"scheduling: (\{.*\})", snippet).group(1).replace("100", "0")
    (tmp_path / "exp.yaml").write_text(
        f"""
name: plugin
seed: 2
cluster: {{profile: a100-sxm-80gb, replicas: 1}}
models:
  llama:
    architecture: llama-2-7b
    batching: {{policy: none}}
    scheduling: {scheduling}
workload:
  rate_rps: 50
  num_requests: 200
  mix:
    - {{model: llama, input_tokens: {{dist: uniform, low: 10, high: 2000}}, output_tokens: 2}}
"""
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["run", "exp.yaml", "--out", str(out), "--no-report", "-q"]) == 0
    df = pd.read_parquet(out / "seed-2" / "requests.parquet").sort_values("start_s")
    # overloaded, one request at a time: whenever several wait, the shortest prompt goes first
    inversions = 0
    starts = df["start_s"].to_numpy()
    for i in range(1, len(df)):
        waiting = df[(df["arrival_s"] <= starts[i - 1]) & (df["start_s"] >= starts[i - 1])]
        chosen = df.iloc[i - 1]
        inversions += int((waiting["input_tokens"] < chosen["input_tokens"]).any())
    assert (df["queue_s"] > 0.1).mean() > 0.5  # the queue really was long
    assert inversions == 0
