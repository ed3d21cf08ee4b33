"""The GPU path measured, in one command on a GPU machine (a few minutes):

    python scripts/gpu_check.py                      # writes results/gpu/
    python scripts/gpu_check.py --dry --out /tmp/g   # the same path on a CPU, tiny sizes

It writes CelebA-shaped data (3×64×64 8-bit images, a `file` task npz), and for each of
the CelebA DAG-VAE and the CelebA VDVAE (the models of configs/celeba/dagvae.yaml and
configs/celeba/vdvae.yaml, with their batch size, optimiser and EMA) trains it on the data
for a fixed number of steps under `accelerate launch`, once in bf16 and once in fp16 (with
Accelerate's grad scaler), runs the `hvbench bench` matrix of the same model (fp32, bf16,
fp16 × two batch sizes), and writes `summary.json` / `summary.md`: images/s, peak memory,
FLOPs per image, achieved TFLOP/s and the fraction of the GPU's bf16 peak (its
datasheet's dense tensor rate where the table below knows the GPU, and the bf16
matmul rate the bench measured in the same run), and every bench cell's step time by
category of op (`hvbench bench --profile`: convolution, matmul, casts, random numbers,
optimiser, element-wise, other), which says in the same run whether memory-bound
element-wise work and casts rather than convolutions fill the GPU's time. Runs, bench and
data stay under --out; nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from hvbench.breakdown import CATEGORIES

REPO = Path(__file__).resolve().parent.parent
# dense bf16 tensor-core TFLOP/s from the vendors' datasheets (no sparsity), by name fragment
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}
PRECISIONS = ("bf16", "fp16")
# --dry: a narrow copy of each model, and no fp16 bench (a CPU emulates fp16: minutes a matmul)
DRY_MODELS = {
    "dagvae": {"widths": [8, 8, 8, 8], "blocks": 1, "head_hidden": 16, "prior_hidden": 8}
    | {"residual": 2, "mixtures": 2},
    "vdvae": {"width": 8, "zdim": 2, "enc_blocks": "", "dec_blocks": "", "blocks_per_res": 1}
    | {"mixtures": 2},
}
# the bench's two batch sizes: around each CelebA config's own (VDVAE's images cost ~70× more)
BENCH_BATCHES = {"dagvae": [32, 128], "vdvae": [8, 16]}


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def write_data(path: Path, n: int, seed: int = 0) -> None:
    """n random 8-bit RGB images of CelebA's 64×64 (the speed does not depend on content)."""
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8))


def celeba_config(model: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "celeba" / f"{model}.yaml").read_text())


def write_config(
    path: Path, model: str, data: Path, out: Path, steps: int, batch: int, eval_n: int, dry: bool
) -> None:
    """A run of `model`'s CelebA network and optimiser on the CelebA-shaped data; without its
    β warm-up and gradient skipping, which change no step's cost (a skipped step is timed)."""
    celeba = celeba_config(model)
    train = celeba["train"]
    config = {
        "task": {"name": "file", "path": str(data)},
        "model": {**celeba["model"], **(DRY_MODELS[model] if dry else {})},
        "train": {
            "steps": steps,
            "batch_size": batch,
            "lr": train["lr"],
            "optimizer": train.get("optimizer", "adam"),
            "ema_rate": train.get("ema_rate", 0.0),
            "grad_clip": train.get("grad_clip", 0.0),
            "eval_every": steps,
            "log_every": max(1, steps // 10),
            "val_examples": eval_n,
            "checkpoint_every": steps,
        },
        "eval": {"batch_size": batch, "max_examples": eval_n, "iwae_k": 0, "au_samples": 2},
        "wandb": {"mode": "disabled"},
        "output": {"root": str(out / "runs"), "figures": False},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def train_run(config: Path, out: Path, model: str, precision: str, timeout: int) -> dict:
    """One `accelerate launch -m hvbench run` in `precision`; its metrics.json record."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    command += ["--mixed_precision", precision, "-m", "hvbench", "run", "--config", str(config)]
    command += ["--set", f"train.precision={precision}", "--set", f"output.run_id={precision}"]
    log = out / f"run-{model}-{precision}.log"
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"gpu_check: the {model} {precision} run failed; see {log}")
    run = out / "runs" / "runs" / "file" / model / precision
    return json.loads((run / "metrics.json").read_text())


def bench(config: Path, out: Path, model: str, batches: list[int], dry: bool, timeout: int) -> dict:
    """The `hvbench bench` matrix of the same model: fp32 / bf16 / fp16 × `batches`."""
    folder = out / f"bench-{model}"
    command = [sys.executable, "-m", "hvbench", "bench", "--config", str(config)]
    command += ["--shape", "3,64,64", "--likelihood", "dlogistic", "--out", str(folder)]
    command += ["--batch", *map(str, batches), "--precision", "no", "bf16"]
    command += ["--profile", "1" if dry else "3"]  # after the timed steps, which it would slow
    if dry:  # seconds-long probes too: the dry path checks the plumbing, not the rates
        command += ["--steps", "1", "--warmup", "0", "--rounds", "1"]
        command += ["--probe-seconds", "0.01", "--probe-batch", "2"]
    else:  # the GPU's rates at the probes' default length, so the fractions mean something
        command.append("fp16")
    log = out / f"bench-{model}.log"
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"gpu_check: the {model} bench failed; see {log}")
    return json.loads((folder / "bench.json").read_text())


def summarise_model(model: str, runs: dict[str, dict], matrix: dict, peak: float | None) -> dict:
    """Per precision: the training loop's images/s and peak memory, FLOPs per image from the
    bench (torch's counter: they do not depend on precision or batch), and fractions of the
    GPU's bf16 peak."""
    matmul = matrix["probes"]["bf16"]["matmul"] / 1000  # TFLOP/s measured in the same bench
    gflop = matrix["cells"][0]["gflop_per_image"]
    rows = {}
    for precision, record in runs.items():
        metrics = record["metrics"]
        rate = metrics["perf/train_images_per_s"]
        achieved = rate * gflop / 1000
        rows[precision] = {
            "images_per_s": rate,
            "peak_memory_mb": metrics["perf/peak_memory_mb"],
            "gflop_per_image": gflop,
            "achieved_tflops": achieved,
            "fraction_of_bf16_datasheet_peak": achieved / peak if peak else None,
            "fraction_of_measured_bf16_matmul": achieved / matmul,
            "overflow_steps": metrics.get("train/overflow_steps"),
            "steps": record["run"]["steps"],
            "batch_size": record["run"]["batch_size"],
            "weights": record["run"].get("weights"),
        }
    profile = [
        {
            "precision": cell["precision"],
            "batch_size": cell["batch_size"],
            "clock": cell["profile"]["clock"],
            "ms_per_step": cell["profile"]["ms_per_step"],
            "shares": cell["profile"]["shares"],
            "non_convolution_share": cell["profile"]["non_convolution_share"],
        }
        for cell in matrix["cells"]
    ]
    return {
        "bf16_matmul_tflops_measured": matmul,
        "runs": rows,
        "profile": profile,
        "bench": f"bench-{model}/bench.json",
    }


def markdown(summary: dict) -> str:
    peak = summary["bf16_datasheet_tflops"]
    measured = ", ".join(
        f"{m['bf16_matmul_tflops_measured']:.2f} in the {name} bench"
        for name, m in summary["models"].items()
    )
    lines = [
        f"# GPU check: {summary['device']}"
        + (" (dry run on a CPU: not a GPU measurement)" if summary["dry"] else ""),
        "",
        f"bf16 peak: {peak or 'unknown'} TFLOP/s (datasheet); bf16 matmul measured: {measured} TFLOP/s.",
        "",
        "| model | precision | batch | steps | img/s | peak MB | GFLOP/img | TFLOP/s | of datasheet bf16 | of measured bf16 matmul |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in summary["models"].items():
        for precision, r in m["runs"].items():
            sheet = r["fraction_of_bf16_datasheet_peak"]
            lines.append(
                f"| {name} | {precision} | {r['batch_size']} | {r['steps']} | {r['images_per_s']:,.1f} | "
                f"{r['peak_memory_mb']:,.0f} | {r['gflop_per_image']:.2f} | {r['achieved_tflops']:.3f} | "
                f"{'—' if sheet is None else f'{100 * sheet:.1f}%'} | "
                f"{100 * r['fraction_of_measured_bf16_matmul']:.1f}% |"
            )
    lines += profile_lines(summary)
    benches = ", ".join(
        f"[{name}]({m['bench'].replace('.json', '.md')})" for name, m in summary["models"].items()
    )
    return "\n".join(lines) + f"\n\nThe bench matrices: {benches}.\n"


def profile_lines(summary: dict) -> list[str]:
    """Each bench cell's step time by category of op, as percentages of the profiled step."""
    names = CATEGORIES
    lines = [
        "",
        "Bench step time by category of op (`hvbench bench --profile`; the GPU's kernel time "
        "per op on a GPU, CPU time on a CPU; non-conv: casts + random + element-wise):",
        "",
        "| model | precision | batch | ms/step | "
        + " | ".join(f"% {n}" for n in names)
        + " | % non-conv |",
        "|---|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for name, m in summary["models"].items():
        for p in m["profile"]:
            shares = " | ".join(f"{100 * p['shares'][n]:.1f}" for n in names)
            lines.append(
                f"| {name} | {p['precision']} | {p['batch_size']} | {p['ms_per_step']:,.1f} | "
                f"{shares} | {100 * p['non_convolution_share']:.1f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu")
    parser.add_argument("--steps", type=int, default=300, help="training steps per precision")
    parser.add_argument(
        "--batch", type=int, help="training batch (default: each model's CelebA config's)"
    )
    parser.add_argument("--models", nargs="+", default=list(DRY_MODELS), choices=list(DRY_MODELS))
    parser.add_argument("--dry", action="store_true", help="tiny sizes; the path on any machine")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per launched command")
    args = parser.parse_args(argv)
    dry = args.dry or not torch.cuda.is_available()
    steps, n, eval_n = (4, 64, 16) if dry else (args.steps, 16384, 1024)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_data(out / "celeba-shaped.npz", n)
    models, device = {}, "unknown"
    for model in args.models:
        batch = 8 if dry else args.batch or celeba_config(model)["train"]["batch_size"]
        config = out / f"{model}-celeba-shaped.yaml"
        write_config(config, model, out / "celeba-shaped.npz", out, steps, batch, eval_n, dry)
        runs = {p: train_run(config, out, model, p, args.timeout) for p in PRECISIONS}
        batches = [4] if dry else BENCH_BATCHES[model]
        matrix = bench(config, out, model, batches, dry, args.timeout)
        device = matrix["machine"]["device"]
        models[model] = summarise_model(model, runs, matrix, bf16_peak(device))
    peak = bf16_peak(device)
    summary = {"device": device, "dry": dry, "bf16_datasheet_tflops": peak, "models": models}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    (out / "celeba-shaped.npz").unlink()  # regenerated on demand; never kept in results/
    print(markdown(summary))


if __name__ == "__main__":
    main()
