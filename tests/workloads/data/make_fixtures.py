"""Write the small synthetic trace files of this folder, in the exact upstream formats.

Run once (``python tests/workloads/data/make_fixtures.py``); the files are committed. The
formats we have no real file of (BurstGPT, Azure Functions 2019 and 2021, Azure LLM 2024)
are tested on these; the real Azure LLM 2023 and Mooncake traces are read from
``../shared/traces`` or the bundled copy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def burstgpt() -> None:
    # columns and order as in BurstGPT_1.csv (HPMLL/BurstGPT, release v1.1); LF endings
    rng = np.random.default_rng(1)
    t = np.sort(rng.integers(0, 600, 40))
    lines = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    for i, ts in enumerate(t):
        model = "ChatGPT" if i % 3 else "GPT-4"
        log = "Conversation log" if i % 4 else "API log"
        req = int(rng.integers(5, 2000))
        resp = 0 if i in (7, 19, 33) else int(rng.integers(1, 800))  # failed requests: 0 tokens out
        lines.append(f"{ts},{model},{req},{resp},{req + resp},{log}")
    (HERE / "BurstGPT_sample.csv").write_text("\n".join(lines) + "\n")


def _hashed(name: str) -> str:
    """A hex id like the trace's HMAC-SHA256 ones (stable across runs)."""
    return hashlib.sha256(name.encode()).hexdigest()


def azure_functions_2019() -> None:
    # invocations_per_function_md.anon.d01.csv: HashOwner,HashApp,HashFunction,Trigger,1..1440
    rng = np.random.default_rng(2)
    header = ["HashOwner", "HashApp", "HashFunction", "Trigger", *[str(m) for m in range(1, 1441)]]
    rows = [",".join(header)]
    funcs = [("o1", "a1", "f1", "http"), ("o1", "a1", "f2", "timer"), ("o2", "a2", "f3", "queue")]
    for k, (owner, app, fn, trig) in enumerate(funcs):
        counts = np.zeros(1440, dtype=int)
        if trig == "timer":
            counts[::5] = 1  # every five minutes
        else:
            active = rng.random(1440) < (0.3 if k == 0 else 0.05)
            counts[active] = rng.poisson(4 if k == 0 else 20, active.sum())
        rows.append(",".join([_hashed(owner), _hashed(app), _hashed(fn), trig, *map(str, counts)]))
    (HERE / "invocations_per_function_md.anon.d01.csv").write_text("\r\n".join(rows) + "\r\n")


def azure_functions_2021() -> None:
    # AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt: app,func,end_timestamp,duration (s)
    rng = np.random.default_rng(3)
    lines = ["app,func,end_timestamp,duration"]
    apps = ["734272c01926d196", "17c37a0fdd5d1932"]
    for _ in range(60):
        app = apps[int(rng.integers(0, 2))]
        func = f"{int(rng.integers(0, 3)):x}313c03f53a0d31f7"
        start = float(rng.uniform(5000, 5600))
        dur = float(np.round(rng.exponential(0.5), 3))
        lines.append(f"{app},{func},{start + dur!r},{dur}")
    (HERE / "AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt").write_text("\n".join(lines) + "\n")


def azure_llm_2024() -> None:
    # AzureLLMInferenceTrace_code_1week.csv: TIMESTAMP,ContextTokens,GeneratedTokens, with the
    # timestamp variants the reader accepts (7 and 9 fractional digits, none, a T, offsets)
    stamps = [
        "2024-05-10 00:00:00.0099300",
        "2024-05-10 00:00:01",
        "2024-05-10 00:00:01.5",
        "2024-05-10 00:00:02.123456",
        "2024-05-10T00:00:02.900000001",
        "2024-05-10 00:00:03.25+00:00",
        "2024-05-10 00:00:04Z",
        "2024-05-10 02:00:05.0000001+02:00",
        "2024-05-10 00:00:06",
    ]
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i, s in enumerate(stamps):
        lines.append(f"{s},{100 * (i + 1)},{10 + i}")
    (HERE / "AzureLLMInferenceTrace_code_1week.csv").write_text("\r\n".join(lines) + "\r\n")


if __name__ == "__main__":
    burstgpt()
    azure_functions_2019()
    azure_functions_2021()
    azure_llm_2024()
