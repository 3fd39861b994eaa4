"""Compare the optimised HLO of the manual value-and-grad (or train step) with jax.grad's, per model.

``python benchmarks/hlo_compare.py mlp_large [--step] [--quick] [--dump DIR]`` prints, for both
compiled programs, the instructions of the entry computation by opcode (each is one kernel
launch or thunk on CPU), the dots and convolutions anywhere in the module, and XLA's memory
analysis; ``--dump`` writes both texts for a line-by-line diff.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from jaxbp.backprop import forward_backward
from jaxbp.bench.models import MODELS, build
from jaxbp.bench.timing import autodiff_forward_backward
from jaxbp.step import init_train_state, train_step_fn

_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = [^=]*? ([a-z][\w\-]*)\(", re.M)


def entry_opcodes(hlo: str) -> collections.Counter:
    """Opcodes of the instructions in the ENTRY computation of an HLO module text."""
    entry = hlo[hlo.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}")]
    return collections.Counter(m.group(1) for m in _INSTR.finditer(entry))


def module_opcodes(hlo: str) -> collections.Counter:
    """Opcodes of all instructions in the module (fused computations included)."""
    return collections.Counter(m.group(1) for m in _INSTR.finditer(hlo))


def compiled_texts(name: str, step: bool, quick: bool) -> dict[str, tuple[str, object]]:
    """``{"manual": (hlo_text, memory_analysis), "jax": (...)}`` for the model ``name``."""
    model = build(name, quick=quick)
    net, loss = model.net, model.loss
    kp, kx, kt, ks = jax.random.split(jax.random.PRNGKey(0), 4)
    opt = optax.sgd(0.01, momentum=0.9)
    out_shape, ts = init_train_state(net, opt, kp, model.x_shape)
    x = jax.random.normal(kx, model.x_shape, jnp.float32)
    t = model.make_target(kt, out_shape)
    if step:
        fns = {
            "manual": train_step_fn(net, loss, opt),
            "jax": train_step_fn(net, loss, opt, forward_backward=autodiff_forward_backward),
        }
        args = (ts, x, t)
    else:
        fns = {
            "manual": lambda p, x, t, s, k: forward_backward(net, loss, p, x, t, state=s, key=k),
            "jax": lambda p, x, t, s, k: autodiff_forward_backward(net, loss, p, x, t, state=s, key=k),
        }
        args = (ts.params, x, t, ts.state, ks)
    out = {}
    for who, fn in fns.items():
        c = jax.jit(fn).lower(*args).compile()
        out[who] = (c.as_text(), c.memory_analysis())
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=list(MODELS))
    p.add_argument("--step", action="store_true", help="compare the train steps instead of value-and-grad")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dump", type=Path, help="write <model>_<manual|jax>.hlo here")
    a = p.parse_args(argv)
    texts = compiled_texts(a.model, a.step, a.quick)
    for who, (hlo, mem) in texts.items():
        entry, allops = entry_opcodes(hlo), module_opcodes(hlo)
        print(f"== {who}: {sum(entry.values())} entry instructions; temp {mem.temp_size_in_bytes} B")
        print("   entry:", dict(sorted(entry.items(), key=lambda kv: -kv[1])))
        print("   dots:", allops["dot"], "convolutions:", allops["convolution"], "fusions:", allops["fusion"])
        if a.dump:
            a.dump.mkdir(parents=True, exist_ok=True)
            (a.dump / f"{a.model}{'_step' if a.step else ''}_{who}.hlo").write_text(hlo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
