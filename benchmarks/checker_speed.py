"""How long a user waits for the checker: each check in a fresh process, timed after ``import jaxbp``.

Three cases (issue 13, item 5; goals in brackets):

* ``check_layer`` on a small user-written layer (README's ``Scale``, 16 features) [<= 1 s];
* ``check_network`` on a 5-level CNN (Conv-Relu-MaxPool-Flatten-Dense) on a 4x12x12x3 batch [<= 3 s];
* ``check_catalogue()``, every built-in layer [<= 30 s].

Each case runs ``--rounds`` times, every time in a new Python process (so nothing is cached; the
import is not counted), and the table gives the median and the range.

    python benchmarks/checker_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

NAMES = {
    "layer": "check_layer(Scale, (8, 16))",
    "network": "check_network(5-level CNN, 4x12x12x3)",
    "catalogue": "check_catalogue()",
}

CASES = {
    "layer": """
def Scale():
    def init(key, input_shape):
        return input_shape, {"s": jnp.ones(input_shape[-1:])}
    def forward(params, x):
        return x * params["s"], x
    def backward(params, x, g):
        return {"s": (g * x).sum(0)}, g * params["s"]
    return jaxbp.Layer(init, forward, backward, name="Scale")
t0 = time.perf_counter()
report = jaxbp.check_layer(Scale(), (8, 16))
""",
    "network": """
levels = jaxbp.Conv2D(8, (3, 3)), jaxbp.Relu(), jaxbp.MaxPool((2, 2)), jaxbp.Flatten(), jaxbp.Dense(10)
net = jaxbp.serial(*levels)
_, params = net.init(jax.random.PRNGKey(0), (4, 12, 12, 3))
x = jax.random.normal(jax.random.PRNGKey(1), (4, 12, 12, 3))
t = jnp.arange(4) % 10
jax.block_until_ready((params, x, t))
t0 = time.perf_counter()
report = jaxbp.check_network(net, jaxbp.SoftmaxCrossEntropy(), params, x, t)
""",
    "catalogue": """
t0 = time.perf_counter()
reports = jaxbp.check_catalogue()
report = type("R", (), {"ok": all(r.ok for r in reports.values())})()
failed = [name for name, r in reports.items() if not r.ok]
""",
}

GOALS = {"layer": 1.0, "network": 3.0, "catalogue": 30.0}

PRELUDE = "import time, json\nimport jax, jax.numpy as jnp\nimport jaxbp\n"
EPILOGUE = """
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "ok": bool(report.ok), "failed": globals().get("failed", [])}))
"""


def time_case(code: str) -> dict:
    """Run one case in a fresh interpreter; its seconds after import and its verdict."""
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + EPILOGUE], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Time every case ``--rounds`` times and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per case (default 3)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of layer,network,catalogue"
    )
    args = parser.parse_args(argv)
    print("| check (fresh process, after import) | median s | min-max s | goal s | verdict |")
    print("|---|---:|---:|---:|---|")
    for name in args.cases.split(","):
        runs = [time_case(CASES[name]) for _ in range(args.rounds)]
        secs = [r["seconds"] for r in runs]
        failed = sorted({name for r in runs for name in r["failed"]})
        ok = "pass" if all(r["ok"] for r in runs) else "FAIL " + ", ".join(failed)
        spread = f"{min(secs):.2f}-{max(secs):.2f}"
        print(f"| {NAMES[name]} | {statistics.median(secs):.2f} | {spread} | {GOALS[name]:.0f} | {ok} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
