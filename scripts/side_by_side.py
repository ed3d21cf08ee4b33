"""hvbench against the official BIVA code, side by side in one run:

    python scripts/side_by_side.py --official "PY TIMER --peer biva_{model} --steps {steps}"

Speed on shared machines changes from day to day (up to 2× here), so a ratio only
means something when both sides are timed in the same run, interleaved. Each round
times, for every paper config (configs/paper/{vae,lvae,biva}.yaml), the official code
in fp32 and then `hvbench bench` of the same net in fp32 and bf16 — which opens with
the machine's own conv and matmul rates in both precisions. The official code is
timed by a command you give (it needs its own environment: the official package pins
its own dependencies): `--official` is a template with `{model}` (vae, lvae, biva)
and `{steps}`, and must print one JSON line holding `images_per_sec`.

The table gives, per model, the official fp32 images/s, hvbench's fp32 and bf16
images/s with their ratios to it, and hvbench's bf16 as a percentage of the bf16
conv rate measured in the same round: on a CPU whose bf16 convolutions are emulated
(no AVX512-BF16 or AMX) bf16 cannot beat fp32, and the percentage is what says how
close to the machine's own limit the model runs. Each hvbench cell is also profiled
after its timed steps (`hvbench bench --profile 1`): the share of casts, random numbers
and element-wise work in its step. The record names the CPU (lscpu's model and bf16
flags: the same machine kind has bf16 units on some days) and the date, since results
of both kinds of CPU are kept side by side. `--option channels_last` (or `compile`)
benches hvbench with that speed option. Writes OUT/side-by-side.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hvbench.bench import OPTIONS
from hvbench.probe import lscpu

REPO = Path(__file__).resolve().parent.parent
MODELS = ("vae", "lvae", "biva")


def run_json(command: list[str]) -> dict[str, Any]:
    """Run a command, return the last JSON line it printed (the timers print one)."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def official(template: str, model: str, steps: int) -> float:
    record = run_json(shlex.split(template.format(model=model, steps=steps)))
    return float(record["images_per_sec"])


def hvbench(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """One `hvbench bench` round of a paper config in fp32 and bf16, with its probes."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "hvbench", "bench"]
        command += ["--config", str(args.configs / f"{model}.yaml"), "--shape", args.shape]
        command += ["--precision", "no", "bf16", "--batch", str(args.batch)]
        command += ["--options", args.option, "--profile", "1"]
        command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", "1"]
        command += [
            "--probe-seconds",
            str(args.probe_seconds),
            "--probe-batch",
            str(args.probe_batch),
        ]
        command += ["--threads", str(args.threads), "--out", folder]
        subprocess.run(command, check=True, capture_output=True, text=True)
        record = json.loads((Path(folder) / "bench.json").read_text())
    cells = {cell["precision"]: cell for cell in record["cells"]}
    return {
        "fp32": cells["no"]["images_per_s"],
        "bf16": cells["bf16"]["images_per_s"],
        "bf16_gflop_per_s": cells["bf16"]["gflop_per_s"],
        "fp32_gflop_per_s": cells["no"]["gflop_per_s"],
        "bf16_conv_rate": record["probes"]["bf16"]["conv"],
        "fp32_conv_rate": record["probes"]["no"]["conv"],
        "bf16_non_conv_share": cells["bf16"]["profile"]["non_convolution_share"],
        "fp32_non_conv_share": cells["no"]["profile"]["non_convolution_share"],
        "gflop_per_image": cells["no"]["gflop_per_image"],
        "device": record["machine"]["device"],
        "cpu_features": record["machine"]["cpu_features"],
    }


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: each round's numbers and ratios (ratios taken within a round)."""
    table = {}
    for model in rounds[0]:
        per_round = []
        for one in rounds:
            cell = dict(one[model])
            cell["fp32_ratio"] = cell["fp32"] / cell["official_fp32"]
            cell["bf16_ratio"] = cell["bf16"] / cell["official_fp32"]
            cell["bf16_of_conv_rate"] = cell["bf16_gflop_per_s"] / cell["bf16_conv_rate"]
            cell["fp32_of_conv_rate"] = cell["fp32_gflop_per_s"] / cell["fp32_conv_rate"]
            per_round.append(cell)
        table[model] = {"rounds": per_round}
        for key in per_round[0]:
            if isinstance(per_round[0][key], float):
                table[model][key] = statistics.median(r[key] for r in per_round)
    return table


def shares(rounds: list[dict[str, Any]]) -> str:
    """The non-convolution shares of hvbench's bf16 and fp32 steps (— in older records)."""
    if "bf16_non_conv_share" not in rounds[0]:
        return "—"
    bf16 = span(rounds, "bf16_non_conv_share", 100, 0)
    return f"{bf16}% / {span(rounds, 'fp32_non_conv_share', 100, 0)}%"


def span(rounds: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 1) -> str:
    values = sorted(r[key] * scale for r in rounds)
    low, high = f"{values[0]:.{digits}f}", f"{values[-1]:.{digits}f}"
    return low if low == high else f"{low}–{high}"


def has_bf16_units(record: dict[str, Any]) -> bool:
    """AVX512-BF16 or AMX, by lscpu's flags where the record has them, else torch's check."""
    flags = (record.get("cpu") or {}).get("flags")
    if flags:
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    features = next(iter(record["table"].values()))["rounds"][0]["cpu_features"]
    return bool(features.get("avx512_bf16") or features.get("amx_tile"))


def markdown(record: dict[str, Any]) -> str:
    first = next(iter(record["table"].values()))["rounds"][0]
    features = ", ".join(k for k, v in first["cpu_features"].items() if v) or "none listed"
    cpu = record.get("cpu") or {}
    flags = cpu.get("flags") or {}
    listed = ", ".join(f for f, on in flags.items() if on) or "none of its bf16 flags"
    machine = f"{cpu['model']}; lscpu flags: {listed}" if cpu.get("model") else first["device"]
    option = record.get("option", "plain")
    lines = [
        "# hvbench against the official BIVA code, side by side",
        "",
        f"{machine} ({first['device']}, torch's CPU features: {features}); batch "
        f"{record['batch']}, {record['rounds']} interleaved rounds, wall clock, hvbench option "
        f"{option}; {record.get('date', record['when'][:10])} ({record['when']}).",
        f"Official code: `{record['official']}`.",
        "",
        "| model | official fp32 img/s | hvbench fp32 | hvbench bf16 | bf16 conv rate "
        "| hvbench bf16 % of it | hvbench fp32 % of the fp32 conv rate "
        "| non-conv share bf16 / fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, measured in record["table"].items():
        rounds = measured["rounds"]
        lines.append(
            f"| {model} | {span(rounds, 'official_fp32')} "
            f"| {span(rounds, 'fp32')} ({span(rounds, 'fp32_ratio', digits=2)}×) "
            f"| {span(rounds, 'bf16')} ({span(rounds, 'bf16_ratio', digits=2)}×) "
            f"| {span(rounds, 'bf16_conv_rate', digits=0)} GFLOP/s "
            f"| {span(rounds, 'bf16_of_conv_rate', 100, 0)}% "
            f"| {span(rounds, 'fp32_of_conv_rate', 100, 0)}% "
            f"| {shares(rounds)} |"
        )
    lines += [
        "",
        "Ranges are over the rounds; each ratio is taken within one round. The non-conv share",
        "is casts + random numbers + element-wise ops in a profiled step's CPU time",
        "(`hvbench bench --profile`).",
    ]
    if not has_bf16_units(record):
        lines += [
            "This CPU has neither AVX512-BF16 nor AMX: its bf16 convolutions are emulated and",
            "run below fp32's rate, so bf16 cannot beat the official fp32 here; the percentage",
            "of the bf16 conv rate says how close to the machine's limit the model runs.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official", required=True, help="timer command template ({model}, {steps})"
    )
    parser.add_argument(
        "--label", help="how the results name the official timer (default: the command itself)"
    )
    parser.add_argument(
        "--configs",
        type=Path,
        default=REPO / "configs" / "paper",
        help="holds {vae,lvae,biva}.yaml",
    )
    parser.add_argument("--shape", default="1,28,28", help="input C,H,W of the bench")
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="which paper nets"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="hvbench timed steps per cell")
    parser.add_argument("--official-steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--probe-seconds", type=float, default=2.0, help="per probe shape (0.5 s moved the % by ±6)"
    )
    parser.add_argument("--probe-batch", type=int, default=64, help="batch of the conv probe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--option",
        choices=OPTIONS,
        default="plain",
        help="hvbench's speed option (train.channels_last, train.compile)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)

    rounds = []
    for index in range(args.rounds):
        one = {}
        for model in args.models:
            print(f"round {index + 1}/{args.rounds}: {model}", file=sys.stderr, flush=True)
            one[model] = {"official_fp32": official(args.official, model, args.official_steps)}
            one[model] |= hvbench(model, args)
        rounds.append(one)
    now = datetime.now(timezone.utc)
    record = {
        "official": args.label or args.official,
        "batch": args.batch,
        "rounds": args.rounds,
        "option": args.option,
        "cpu": lscpu(),
        "date": now.date().isoformat(),
        "when": now.isoformat(timespec="seconds"),
        "table": summarise(rounds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "side-by-side.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    (args.out / "side-by-side.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
