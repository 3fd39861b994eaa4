"""What ``jaxbp train`` says: its defaults in ``--help``, what it did (devices, plot, angles), progress
wherever the output goes, ``--debug`` anywhere, and a user's own network by ``--model module:factory``.

Most tests run :func:`jaxbp.cli.main` in-process; the progress tests run real processes, piped and
in a pseudo-terminal that reports 0 columns.
"""

import json
import math
import os
import pty
import struct
import subprocess
import sys

import pytest
from harness import one_line_error, tiny_npz

from jaxbp import cli, rules
from jaxbp.errors import DataError
from jaxbp.train import cli as train_cli
from jaxbp.train import progress, run
from jaxbp.train.fit import FitResult
from jaxbp.train.models import preset_widths


@pytest.fixture
def npz(tmp_path):
    return tiny_npz(tmp_path / "d.npz")


def train(npz, *flags):
    return cli.main(["train", "--dataset", "npz", "--data-dir", str(npz), "--batch-size", "16", *flags])


class FakeFit:
    """Stands in for ``fit``: records the call, returns a result (with a train state when asked)."""

    def __init__(self, train_state=None):
        self.calls, self.train_state = [], train_state

    def __call__(self, net, data, optimizer, **kw):
        self.calls.append(dict(net=net, data=data, **kw))
        return FitResult(self.train_state, {"epoch": [1]}, 0.5, 0.25, 1, 0.0, 0.0)


@pytest.fixture
def fake_fit(monkeypatch):
    rec = FakeFit()
    monkeypatch.setattr(train_cli, "fit", rec)
    return rec


# --- --help: every preset's defaults and every rule, generated from the tables the run uses ---


def test_help_shows_each_presets_defaults_and_explains_every_rule(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.startswith("  ")}
    for (dataset, model), d in train_cli.DEFAULTS.items():
        if dataset == "*":
            continue
        v = {**train_cli.DEFAULTS["*", "*"], **d}
        want = [f"{v[k]:g}" for k in run.NUMBERS] + [",".join(map(str, preset_widths(model, dataset)))]
        assert rows[dataset, model] == want, (dataset, model)
    assert rows["other", "any"][: len(run.NUMBERS)] == [
        f"{train_cli.DEFAULTS['*', '*'][k]:g}" for k in run.NUMBERS
    ]
    for name, rule in rules.RULES.items():  # every rule of the registry, with its summary
        assert f"  {name.ljust(4)}  {rule.summary}" in out
    assert "--schedule cosine" in out and "--optimizer sgd" in out  # the preset-independent defaults
    flat = " ".join(out.split())
    assert "sgd: SGD with --momentum; adam: Adam (ignores --momentum) (default: sgd)" in flat
    assert "(default: cosine)" in flat and "MODULE:FACTORY" in flat
    for flag in ("--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay", "--dropout"):
        i = flat.index(f"{flag} ", flat.index("options:"))
        assert "default: per data set and model" in flat[i : i + 200], flag


# --- --debug after the command; --devices refused before the mesh, and confirmed ---


def test_debug_is_accepted_after_the_command_too(tmp_path):
    missing = str(tmp_path / "missing.npz")
    for argv in (["--debug", "train"], ["train", "--debug"]):
        with pytest.raises(DataError, match="npz: no file"):
            cli.main([*argv, "--dataset", "npz", "--data-dir", missing])


@pytest.mark.parametrize("value", ["0", "-1"])
def test_devices_below_one_are_refused_by_the_parser(value, capsys, fake_fit):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--devices", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"jaxbp train: error: argument --devices: {value} is out of range: must be >= 1"
    assert not fake_fit.calls


def test_devices_beyond_the_machine_are_one_line_and_a_chosen_count_is_confirmed(npz, capsys, fake_fit):
    import jax

    n = len(jax.devices())
    assert train(npz, "--devices", str(n + 1)) == 2
    assert f"--devices {n + 1}: only {n} cpu device(s) here" in one_line_error(capsys)
    assert train(npz, "--devices", "1") == 0
    out = capsys.readouterr().out
    assert f"data-parallel over 1 cpu device(s): {jax.devices()[0]}" in out
    assert not run.devices_line(None) or n > 1  # one device by default: no line


# --- what the run did: the angle per epoch, the plot's path; --json with NaN inside ---


def test_rule_prints_the_angle_every_epoch_and_plot_says_where(npz, tmp_path, capsys):
    png = tmp_path / "p.png"
    flags = ("--widths", "8", "--epochs", "2", "--rule", "fa", "--plot", str(png), "--json")
    assert train(npz, *flags) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2
    for line in epochs:
        _, angles = line.split("dx angle to bp (deg), level ")
        parsed = dict(item.split(": ") for item in angles.split("  "))
        assert list(parsed) == ["1", "3"] and all(0 <= float(v) <= 180 for v in parsed.values())
    assert lines[-2] == f"wrote the loss/accuracy curves and the gradient flow per level to {png}"
    assert png.stat().st_size > 10_000
    summary = json.loads(lines[-1])
    assert summary["rule"] == "fa" and set(summary["alignment"]) == {"1", "3"}


def test_json_writes_nested_nan_as_null(npz, capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "fit", FakeFit(train_state=object()))
    nan, inf = float("nan"), float("inf")
    monkeypatch.setattr(
        rules, "final_alignment", lambda *a: {"1": {"dx": nan, "dparams": 3.0}, "3": {"dx": inf}}
    )
    assert train(npz, "--widths", "8", "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["alignment"] == {"1": {"dx": None, "dparams": 3.0}, "3": {"dx": None}}
    assert run.finite_or_null([1.0, (nan,), {"a": [inf]}]) == [1.0, [None], {"a": [None]}]


def test_dp_without_dp_accounting_is_refused_before_training(npz, capsys, fake_fit, monkeypatch):
    real = train_cli.importlib.util.find_spec
    monkeypatch.setattr(
        train_cli.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "dp_accounting" else real(name, *a),
    )
    assert train(npz, "--dp-clip", "1", "--dp-noise", "1") == 2
    line = one_line_error(capsys)
    assert "--dp-clip/--dp-noise report epsilon with dp-accounting, which is not installed" in line
    assert not fake_fit.calls


# --- --model module:factory: your own network, with every flag ---

MODULE = '''
import jaxbp

def make_net():
    """A network of the user's own: 16 features in, 3 classes out."""
    return jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(6), jaxbp.Tanh(), jaxbp.Dense(3))

def with_shape():
    return make_net(), (8, 4, 4, 1)

def wrong_classes():
    return jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(5))

def no_flatten():
    return jaxbp.serial(jaxbp.Dense(6), jaxbp.Relu(), jaxbp.Dense(3))

def raises():
    raise RuntimeError("no GPU here")

def not_a_layer():
    return 42

NOT_CALLABLE = 3
'''


def test_model_factory_trains_the_users_network_with_every_flag(npz, tmp_path, capsys, monkeypatch):
    (tmp_path / "user_nets.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "user_nets", raising=False)
    ck = tmp_path / "ck"
    flags = ("--epochs", "1", "--rule", "usf", "--checkpoint-dir", str(ck), "--json")
    assert train(npz, "--model", "user_nets:make_net", *flags) == 0
    out = capsys.readouterr().out
    assert "model usf(serial(Flatten, Dense(6), Tanh, Dense(3)))" in out and "dx angle to bp" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["model"] == "user_nets:make_net" and summary["epochs"] == 1
    monkeypatch.setattr(train_cli, "fit", FakeFit())
    assert train(npz, "--model", "./user_nets.py:with_shape", "--epochs", "1") == 0  # a path; (layer, shape)
    assert train_cli.fit.calls[-1]["net"].name == "serial(Flatten, Dense(6), Tanh, Dense(3))"


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "user_nets:wrong_classes",
            "maps a batch of shape (16, 4, 4, 1) to (16, 5), but the loss needs logits",
        ),
        (
            "user_nets:no_flatten",
            "to (16, 4, 4, 3), but the loss needs logits of shape (16, 3) (batch, classes) for the 3 classes"
            " of d; the examples of d are (4, 4, 1) arrays: start the network with Flatten()",
        ),
        ("user_nets:raises", "--model user_nets:raises: user_nets:raises() raised RuntimeError: no GPU here"),
        ("user_nets:not_a_layer", "user_nets:not_a_layer() returned int, expected a jaxbp Layer"),
        ("user_nets:NOT_CALLABLE", "--model user_nets:NOT_CALLABLE: int is not callable"),
        ("user_nets:nothing", "--model user_nets:nothing: user_nets has no 'nothing'"),
        (
            "no_such_module:f",
            "cannot import no_such_module: ModuleNotFoundError: No module named 'no_such_module'",
        ),
        ("broken:f", "cannot import broken: SyntaxError: "),
        ("raising:f", "cannot import raising: ZeroDivisionError: division by zero"),
        ("./missing.py:f", "--model ./missing.py:f: no file missing.py"),
    ],
)
def test_model_factory_errors_are_one_line(spec, message, npz, tmp_path, capsys, monkeypatch):
    (tmp_path / "user_nets.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "raising.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    for name in ("user_nets", "broken", "raising"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert train(npz, "--model", spec, "--epochs", "1") == 2
    assert message in one_line_error(capsys)


def test_preset_flags_with_a_factory_and_bad_specs_are_refused(npz, capsys, fake_fit):
    assert train(npz, "--model", "m:f", "--widths", "8") == 2
    assert "--widths is for the presets (mlp, cnn), not for --model m:f" in one_line_error(capsys)
    assert train(npz, "--model", "m:f", "--activation", "tanh") == 2
    assert "--activation is for the presets" in one_line_error(capsys)
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "m:1f"])
    assert "invalid choice: 'm:1f' (choose from mlp, cnn, or MODULE:FACTORY" in capsys.readouterr().err
    assert not fake_fit.calls


def test_activation_flag_builds_the_tanh_mlp(npz, fake_fit):
    assert train(npz, "--activation", "tanh", "--widths", "8,4") == 0
    assert fake_fit.calls[-1]["net"].name == "serial(Flatten, Dense(8), Tanh, Dense(4), Tanh, Dense(3))"
    assert fake_fit.calls[-1]["config"]["activation"] == "tanh"


# --- progress: piped output and a terminal of 0 columns show it; a terminal with columns gets a bar ---


def _argv(npz, *flags):
    return [sys.executable, "-m", "jaxbp", "train", "--dataset", "npz", "--data-dir", str(npz), *flags]


def test_piped_output_shows_progress_lines_during_an_epoch(npz, capsys):
    """stderr not a terminal (here: captured, as when piped to tee): plain progress lines."""
    flags = ("--widths", "8", "--epochs", "1", "--progress-every", "0")
    assert cli.main(["train", "--dataset", "npz", "--data-dir", str(npz), "--batch-size", "4", *flags]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) >= 10 and all(line.startswith("epoch 1/1: batch ") for line in lines), lines
    assert "epoch   1/1  train loss" in captured.out  # the epoch line itself goes to stdout, as before


def test_a_terminal_reporting_zero_columns_still_shows_the_epochs(npz):
    primary, secondary = pty.openpty()
    import fcntl
    import termios

    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))  # 24 rows, 0 columns
    flags = ("--widths", "8", "--batch-size", "16", "--epochs", "2")
    proc = subprocess.Popen(_argv(npz, *flags), stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode()
    assert "epoch   1/2  train loss" in text and "epoch   2/2  train loss" in text, text


def test_choose_picks_a_bar_only_on_a_terminal_with_columns(tmp_path):
    with open(tmp_path / "log", "w") as f:
        assert progress.choose(f) == "lines"
    assert progress.choose(None, "none") == "none"
    with pytest.raises(ValueError, match="unknown progress mode"):
        progress.choose(None, "fancy")


def test_lines_mode_prints_only_when_an_epoch_runs_long(capsys):
    shown = progress.Progress("lines", every=math.inf)
    shown.start(1, 3, 100)
    for i in range(100):
        shown.tick(i)
    assert capsys.readouterr().err == ""  # a short epoch: nothing
    shown = progress.Progress("lines", every=0.0)
    shown.start(2, 3, 100)
    shown.tick(49)
    assert capsys.readouterr().err.startswith("epoch 2/3: batch 50/100 (50%), ")


# --- the newcomer's first commands: make train installs the runtime set and says what is next ---


def test_make_train_installs_only_the_runtime_set_and_says_what_next(capsys):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dry = subprocess.run(
        ["make", "-n", "-B", "-C", root, "train"], capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    installs = [
        line for line in dry.stdout.splitlines() if "pip install" in line and "upgrade pip" not in line
    ]
    assert installs and all(line.rstrip().endswith("-e .") for line in installs), installs
    dev = subprocess.run(["make", "-n", "-B", "-C", root, "test"], capture_output=True, text=True, timeout=60)
    assert any('-e ".[dev]"' in line for line in dev.stdout.splitlines())
    hints = [
        line.split("jaxbp ", 1)[1].split("  ")[0]
        for line in dry.stdout.splitlines()
        if "echo '  jaxbp " in line
    ]
    assert len(hints) >= 4
    for hint in hints:  # every suggested command parses
        argv = hint.split()
        if "--help" in argv:
            with pytest.raises(SystemExit) as e:
                cli.build_parser(argv).parse_args(argv)
            assert e.value.code == 0 and "defaults of the flags left unset" in capsys.readouterr().out
            continue
        args = cli.build_parser(argv).parse_args(argv)
        assert args.command in cli.COMMANDS, hint


def test_the_dp_extra_is_an_alias_and_dp_accounting_a_runtime_dependency():
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert any(d.startswith("dp-accounting") for d in project["dependencies"])
    assert project["optional-dependencies"]["dp"] == []
