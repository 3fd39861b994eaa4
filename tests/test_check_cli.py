"""``python -m jaxbp check``: catalogue entries, JSON output, a user's layer factory, exit status."""

from __future__ import annotations

import json
import sys
import textwrap

from jaxbp.cli import main

BUGGY = textwrap.dedent("""
    import jax.numpy as jnp
    from jaxbp.core import Layer

    def make_layer():
        def init(key, shape):
            return tuple(shape), {"a": jnp.ones(shape[-1:])}

        def forward(p, x):
            return p["a"] * jnp.sin(x), x

        def backward(p, x, g):
            # dx = g * a * cos(x); da = sum_batch(g * sin(x))
            return {"a": (g * jnp.sin(x)).sum(0)}, g * p["a"] * jnp.sin(x)  # bug: sin for cos

        return Layer(init, forward, backward, name="SinScale")

    def make_good():
        return make_layer()._replace(
            backward=lambda p, x, g: ({"a": (g * jnp.sin(x)).sum(0)}, g * p["a"] * jnp.cos(x))), (3, 4)
""")


def test_catalogue_entry_json(capsys):
    assert main(["check", "--layer", "Dense", "--seeds", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["reports"]["Dense"]["failed_levels"] == []
    assert {r["leaf"] for r in data["reports"]["Dense"]["rows"]} == {"['W']", "['b']", "x"}


def test_user_factory_with_a_planted_bug(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_layers.py").write_text(BUGGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "user_layers:make_layer", "--input-shape", "4,6", "--seeds", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL SinScale on (4, 6): error starts at level 0 (SinScale), leaves x" in out
    assert "0/1 passed" in out
    assert main(["check", "user_layers:make_good", "--seeds", "2"]) == 0  # shape from the factory
    sys.modules.pop("user_layers", None)


def test_unknown_layer_and_missing_shape(tmp_path, monkeypatch, capsys):
    assert main(["check", "--layer", "NoSuchLayer"]) == 2
    assert "unknown layer" in capsys.readouterr().err
    (tmp_path / "user_layers2.py").write_text(BUGGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "user_layers2:make_layer"]) == 2  # a usage error, not a failed check
    assert "--input-shape is required" in capsys.readouterr().err


NAN = textwrap.dedent("""
    import jax.numpy as jnp
    from jaxbp.core import Layer

    def make_nan():
        backward = lambda p, r, g: ((), g * jnp.nan)  # bug: dx = 2 g times NaN
        return Layer(lambda k, s: (tuple(s), ()), lambda p, x: (2 * x, ()), backward), (3, 4)

    def not_a_layer():
        return 42

    def raises():
        raise RuntimeError("boom")
""")


def test_exit_codes_distinguish_a_wrong_backward_from_a_usage_error(tmp_path, monkeypatch, capsys):
    """0 = passed, 1 = a backward is wrong (NaN included), 2 = the module, factory or arguments are bad."""
    (tmp_path / "user_nan.py").write_text(NAN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "user_nan:make_nan", "--seeds", "1"]) == 1
    assert "non-finite hand-written value" in capsys.readouterr().out
    for argv, message in [
        (["check", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
        (["check", "user_nan:missing"], "module 'user_nan' has no 'missing'"),
        (["check", "user_nan"], "expected 'module:function'"),
        (["check", "user_nan:not_a_layer"], "returned int, expected a Layer"),
        (["check", "user_nan:raises"], "raised RuntimeError: boom"),
        (["check", "user_nan:make_nan", "--input-shape", "3,x"], "--input-shape must be comma-separated"),
        (["check", "user_nan:make_nan", "--seeds", "0"], "seeds must be an integer >= 1"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("jaxbp check: ") and message in err and len(err.strip().splitlines()) == 1, err
    sys.modules.pop("user_nan", None)


def test_exit_codes_are_documented():
    import jaxbp.check.cli as check_cli

    doc = check_cli.__doc__
    assert (
        "0  every check passed" in doc and "1  a backward is wrong" in doc and "2  usage or load error" in doc
    )
