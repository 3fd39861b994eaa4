"""``python -m jaxbp bench``: the hand-written backward against ``jax.value_and_grad``, side by side.

For every model the same params and inputs go through the jit-compiled manual
value-and-grad and ``jax.jit(jax.value_and_grad(...))`` of the same forward and loss,
then through the full train step (with the optax update) built either way. Timings
are medians of alternating blocks (ABAB...); memory and compile time come from XLA.
Then a large GEMM measures the machine's matmul throughput, and a digits epoch
compares per-step dispatch, the compiled epoch and PyTorch eager (when installed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxbp.backprop import forward_backward
from jaxbp.bench.epoch import epoch_benchmark
from jaxbp.bench.models import Model, ModelUnavailableError, build
from jaxbp.bench.peer import cnn_peer, torch_sees_gpu
from jaxbp.bench.timing import (
    autodiff_forward_backward,
    compile_stats,
    gemm_throughput,
    make_gemm,
    mlp_step_flops,
    time_alternating,
)
from jaxbp.step import init_train_state, train_step_fn


def machine_info() -> dict[str, Any]:
    """The machine, JAX and device the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def _max_rel_err(a, b) -> float:
    """The largest |a - b| / max|b| over the leaves of two pytrees."""
    errs = jax.tree.leaves(
        jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30)), a, b)
    )
    return max(errs, default=0.0)


def bench_model(
    model: Model,
    repeats: int,
    min_block_s: float,
    gemm: tuple | None = None,
    seed: int = 0,
    null: bool = False,
) -> dict[str, Any]:
    """Time, size and compile one model's value-and-grad and train step, manual against jax.grad.

    With ``null``, a second compiled copy of the manual value-and-grad joins the alternation and
    ``vg["null_ratio"]`` (manual / copy) shows how far from 1.00 noise alone moves a ratio.
    For MLPs, ``gemm = (fn, args, flops)`` (see :func:`make_gemm`) is timed alternately with
    the manual train step, and the step's matmul FLOP/s is reported as a percentage of it.
    """
    net, loss = model.net, model.loss
    kp, kx, kt, ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    optimizer = optax.sgd(0.01, momentum=0.9)
    out_shape, ts = init_train_state(net, optimizer, kp, model.x_shape)
    x = jax.random.normal(kx, model.x_shape, jnp.float32)
    target = model.make_target(kt, out_shape)

    def manual_vg(p, x, t, s, k):
        return forward_backward(net, loss, p, x, t, state=s, key=k, train=True)

    def jax_vg(p, x, t, s, k):
        return autodiff_forward_backward(net, loss, p, x, t, state=s, key=k, train=True)

    vg_args = (ts.params, x, target, ts.state, ks)
    step_args = (ts, x, target)
    compiled, stats = {}, {}
    for kind, fns, args in (
        ("vg", {"manual": manual_vg, "jax": jax_vg}, vg_args),
        (
            "step",
            {
                "manual": train_step_fn(net, loss, optimizer),
                "jax": train_step_fn(net, loss, optimizer, forward_backward=autodiff_forward_backward),
            },
            step_args,
        ),
    ):
        for who, fn in fns.items():
            compiled[kind, who], stats[kind, who] = compile_stats(fn, *args)

    (v_m, g_m, _), (v_j, g_j, _) = compiled["vg", "manual"](*vg_args), compiled["vg", "jax"](*vg_args)
    result: dict[str, Any] = {
        "model": model.name,
        "description": model.description,
        "loss_abs_diff": float(abs(v_m - v_j)),
        "grad_max_rel_err": _max_rel_err(g_m, g_j),
    }
    for kind, args in (("vg", vg_args), ("step", step_args)):
        fns = {"manual": (compiled[kind, "manual"], args), "jax": (compiled[kind, "jax"], args)}
        if null and kind == "vg":  # the null test: the manual program against a second copy of itself
            fns["copy"] = (compile_stats(manual_vg, *args)[0], args)
        t = time_alternating(fns, repeats=repeats, min_block_s=min_block_s)
        result[kind] = {
            "manual_s": t["manual_s"],
            "jax_s": t["jax_s"],
            "ratio": t["ratio"],
            "calls_per_block": t["calls_per_block"],
            **{f"{who}_{k}": v for who in ("manual", "jax") for k, v in stats[kind, who].items()},
        }
        if "copy" in fns:
            result[kind]["null_ratio"] = t["ratios"]["copy"]
    if model.dense_sizes:
        flops = result["matmul_flops"] = mlp_step_flops(model.dense_sizes, model.x_shape[0])
        result["step_matmul_flops_per_s"] = flops / result["step"]["manual_s"]
        if gemm is not None:  # step and GEMM alternate, so the machine's load hits both alike
            fn, gemm_args, gemm_flops = gemm
            t = time_alternating(
                {"step": (compiled["step", "manual"], step_args), "gemm": (fn, gemm_args)},
                repeats=repeats,
                min_block_s=min_block_s,
            )
            result["step_pct_of_gemm"] = 100 * (flops / gemm_flops) / t["ratio"]
            result["gemm_flops_per_s_paired"] = gemm_flops / t["gemm_s"]
    return result


def on_cpu() -> bool:
    """Whether JAX computes on the CPU: PyTorch CPU peers are compared only then (side by side on
    one device; on a GPU the peer is PyTorch on CUDA)."""
    return jax.default_backend() == "cpu"


def _cnn_peers(model, args: argparse.Namespace) -> list[dict]:
    """The CNN step against PyTorch eager on the device JAX uses: CPU thread counts, or CUDA."""
    repeats = max(3, args.repeats // 2)
    if not on_cpu():
        peer = cnn_peer(model, repeats, 1, args.min_block, "cuda") if torch_sees_gpu() else None
        return [peer] if peer else []
    return [p for n in args.torch_threads if (p := cnn_peer(model, repeats, n, min_block_s=args.min_block))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark as configured by the command-line ``args``; return all figures."""
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.silent else (lambda *a: None)
    out: dict[str, Any] = {"machine": machine_info(), "models": [], "skipped": {}}
    say(f"jaxbp bench on {out['machine']['device']} ({out['machine']['cpu']}), jax {jax.__version__}")
    gemm = make_gemm(args.gemm_n) if args.gemm_n else None
    for name in args.models:
        try:
            model = build(name, quick=args.quick)
        except ModelUnavailableError as e:
            out["skipped"][name] = str(e)
            say(f"  {name}: skipped ({e})")
            continue
        r = bench_model(model, args.repeats, args.min_block, gemm, null=bool(model.dense_sizes))
        out["models"].append(r)
        say(f"  {name}: value_and_grad x{r['vg']['ratio']:.3f}, train step x{r['step']['ratio']:.3f}")
        if model.widths and args.peer:
            out["peer"] = _cnn_peers(model, args)
            say(f"  {name}: PyTorch peer " + ", ".join(f"x{p['ratio']:.2f}" for p in out["peer"]))
    if args.gemm_n:
        out["gemm"] = gemm_throughput(args.gemm_n, repeats=max(3, args.repeats // 2))
        say(f"  gemm {args.gemm_n}: {out['gemm']['flops_per_s'] / 1e9:.1f} GFLOP/s")
    if args.epoch:
        out["epoch"] = epoch_benchmark(
            batch=args.epoch_batch,
            repeats=max(3, args.repeats // 3),
            threads=args.torch_threads if on_cpu() else (),  # its PyTorch peer runs on the CPU
            limit=4 if args.quick else None,
            min_block_s=args.min_block,
        )
        say("  digits epoch done")
    return out


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def format_table(res: dict[str, Any]) -> str:
    """The results as a Markdown table (readable on a terminal and pasteable into the README)."""
    m = res["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpu_count']} cores; device {m['device']} ({m['backend']}); "
        f"jax {m['jax']}; {m['date']}",
        "",
        "| model | vg manual ms | vg jax ms | vg ratio | step manual ms | step jax ms | step ratio "
        "| temp MiB manual/jax | arg MiB manual/jax | compile s manual/jax |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["models"]:
        v, s = r["vg"], r["step"]
        lines.append(
            f"| {r['description']} | {1e3 * v['manual_s']:.3f} | {1e3 * v['jax_s']:.3f} | {v['ratio']:.3f} "
            f"| {1e3 * s['manual_s']:.3f} | {1e3 * s['jax_s']:.3f} | {s['ratio']:.3f} "
            f"| {_mib(v['manual_temp_bytes'])}/{_mib(v['jax_temp_bytes'])} "
            f"| {_mib(v['manual_argument_bytes'])}/{_mib(v['jax_argument_bytes'])} "
            f"| {v['manual_compile_s']:.2f}/{v['jax_compile_s']:.2f} |"
        )
    for name, why in res["skipped"].items():
        lines.append(f"| {name}: skipped ({why}) |" + " |" * 9)
    for r in res["models"]:
        if "null_ratio" in r["vg"]:
            lines.append(
                f"\n{r['description']}: null test, value_and_grad against a second compiled copy of"
                f" itself in the same alternation: x{r['vg']['null_ratio']:.3f}"
            )
    if res.get("peer"):
        lines += ["", "| CNN train step (SGD momentum) | jaxbp ms | PyTorch eager ms | jaxbp / PyTorch |"]
        lines.append("|---|---:|---:|---:|")
        for p in res["peer"]:
            where = "CUDA" if p["device"] == "cuda" else f"cpu, {p['threads']} thread(s)"
            lines.append(
                f"| PyTorch {p['torch_version']} on {where} "
                f"| {1e3 * p['jaxbp_s']:.1f} | {1e3 * p['torch_s']:.1f} | {p['ratio']:.2f} |"
            )
    elif "peer" in res:
        lines += ["", f"No PyTorch peer on {m['backend']} (not installed, or it does not see this device)"]
    if "gemm" in res:
        g = res["gemm"]
        lines += ["", f"GEMM {g['n']}x{g['n']} float32: {g['flops_per_s'] / 1e9:.1f} GFLOP/s"]
        for r in res["models"]:
            if "step_pct_of_gemm" in r:
                lines.append(
                    f"{r['description']}: train step at {r['step_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s"
                    f" (matmul FLOPs) = {r['step_pct_of_gemm']:.1f}% of the GEMM timed alternately with it"
                    f" ({r['gemm_flops_per_s_paired'] / 1e9:.1f} GFLOP/s)"
                )
    if "epoch" in res:
        e = res["epoch"]
        lines += [
            "",
            f"Digits MLP 64-128-10 epoch ({e['steps']} steps of {e['batch']}): per-step dispatch "
            f"{1e3 * e['per_step_s']:.1f} ms, compiled epoch {1e3 * e['compiled_s']:.1f} ms "
            f"({e['compiled_vs_per_step']:.1f}x); pipelined, one host read per block of epochs"
            f" {1e3 * e['pipelined_s']:.1f} ms",
        ]
        for n, t in e["torch_s"].items():
            lines.append(
                f"PyTorch {e['torch_version']} eager, {n} thread(s): {1e3 * t:.1f} ms;"
                f" the compiled epoch is {e['compiled_vs_torch'][n]:.1f}x faster"
                f" ({e['pipelined_vs_torch'][n]:.1f}x pipelined)"
            )
        if not e["torch_s"]:
            backend = m["backend"]
            why = "not installed" if backend == "cpu" else f"that peer is CPU PyTorch; JAX is on {backend}"
            lines.append(f"No PyTorch comparison ({why})")
    return "\n".join(lines)
