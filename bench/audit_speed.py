"""How long `align-recipes audit` takes on 200,000 UltraFeedback-layout rows (the Done-when of issue 23: under
10 s on this machine).

Writes the rows to a temporary folder as JSON Lines in UltraFeedback binarized's layout (prompt, prompt_id,
chosen and rejected as whole chats, messages, score_chosen, score_rejected) with problems planted at known
rates, then times the whole CLI command in a fresh process per round: wall time, and the child's CPU time
(user + system), which a machine loaded by other processes inflates far less. Each round's report is checked
against the planted counts.

    python bench/audit_speed.py --rows 200000 --rounds 3 --json bench/results/audit-speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the a model answer question data train value loss step reward policy token prompt result check list "
    "number time people water light river city music paper table window garden morning evening simple "
    "quickly carefully because however therefore example problem solution reason method system process"
).split()
PLANTED_EVERY = 100  # in every 100 rows: a duplicate, a near duplicate, a contradiction, an identical pair


def chat(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def ultrafeedback_rows(count: int, prompt_words: int, answer_words: int, seed: int = 0):
    """Rows with unique prompts, except at these offsets of every hundred: 1 repeats row 0 exactly, 2 repeats it
    with case and punctuation changed (a near duplicate), 4 is row 3 with its answers swapped (a contradiction),
    5 has chosen == rejected."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choices(WORDS, k=n)).capitalize() + "."

    hundred: dict[int, tuple[str, str, str]] = {}
    for index in range(count):
        offset = index % PLANTED_EVERY
        if offset == 1:
            prompt, chosen, rejected = hundred[0]
        elif offset == 2:
            prompt, chosen, rejected = (part.upper().replace(".", "!") for part in hundred[0])
        elif offset == 4:
            prompt, rejected, chosen = hundred[3]
        else:
            prompt, chosen = f"Question {index}: {text(prompt_words)}", text(answer_words)
            rejected = chosen if offset == 5 else text(answer_words)
        hundred[offset] = (prompt, chosen, rejected)
        yield {
            "prompt": prompt,
            "prompt_id": f"{index:016x}",
            "chosen": chat(prompt, chosen),
            "rejected": chat(prompt, rejected),
            "messages": chat(prompt, chosen),
            "score_chosen": 8.0,
            "score_rejected": 5.0,
        }


def expected_counts(count: int) -> dict[str, int]:
    full, rest = divmod(count, PLANTED_EVERY)
    planted = lambda offset: full + (1 if rest > offset else 0)  # noqa: E731
    return {
        "identical": planted(5),
        "duplicate": planted(1),
        "near_duplicate": planted(2),
        "contradictory": 2 * planted(4),
    }


def time_audit(path: Path, env: dict) -> dict:
    """One `align-recipes audit PATH --json` in a fresh process: wall and CPU seconds, and its report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "align_recipes", "audit", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"audit failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "audit_s": report["seconds"],  # inside the process, imports excluded
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "counts": {name: finding["count"] for name, finding in report["findings"].items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-words", type=int, default=30)
    parser.add_argument("--answer-words", type=int, default=80)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), *sys.path]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ultrafeedback.jsonl"
        started = time.perf_counter()
        with open(path, "w", encoding="utf-8") as handle:
            for row in ultrafeedback_rows(args.rows, args.prompt_words, args.answer_words):
                handle.write(json.dumps(row) + "\n")
        print(
            f"wrote {args.rows} rows, {path.stat().st_size / 1e6:.0f} MB, in {time.perf_counter() - started:.0f}s"
        )
        rounds = []
        for number in range(args.rounds):
            result = time_audit(path, env)
            expected = expected_counts(args.rows)
            wrong = {
                k: (result["counts"].get(k), v) for k, v in expected.items() if result["counts"].get(k) != v
            }
            if wrong or any(v for k, v in result["counts"].items() if k not in expected):
                raise SystemExit(
                    f"the audit's counts differ from the planted ones: {result['counts']} vs {expected}"
                )
            print(
                f"round {number + 1}: wall {result['wall_s']:.1f}s, CPU {result['cpu_s']:.1f}s "
                f"(audit itself {result['audit_s']:.1f}s wall), load average {result['load_average']}",
                flush=True,
            )
            rounds.append(result)
        size = path.stat().st_size
    import pyarrow

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "rows": args.rows,
        "file_mb": round(size / 1e6, 1),
        "bytes_per_row": round(size / args.rows),
        "words": {"prompt": args.prompt_words, "answer": args.answer_words},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pyarrow.__version__,
        },
        "median_wall_s": statistics.median(r["wall_s"] for r in rounds),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in rounds),
        "rounds": rounds,
    }
    print(f"median: wall {results['median_wall_s']:.1f}s, CPU {results['median_cpu_s']:.1f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
