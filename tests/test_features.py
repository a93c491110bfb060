"""FeatureCapture (hotcb.features): stats on known inputs, the every-N schedule, hooks attached
only for capture steps, and the live toggle through the real command path (a real HotKernel on
a run directory, commands written by HotClient and by the ``hotcb`` CLI in a subprocess)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from hotcb import HotKernel  # noqa: E402
from hotcb.client import HotClient  # noqa: E402
from hotcb.features import (  # noqa: E402
    DEFAULT_EVERY,
    DEFAULT_MAX_LAYERS,
    STATS,
    FeatureCapture,
    activation_stats,
    read_features,
    select_modules,
)
from hotcb.runfiles import FEATURES  # noqa: E402


def records(run_dir: str) -> list[dict[str, Any]]:
    return read_features(run_dir)[0]


def hooks(model: nn.Module) -> int:
    """How many forward hooks the model's modules carry, all together."""
    return sum(len(m._forward_hooks) for m in model.modules())


def known_layer() -> nn.Sequential:
    """Linear(2 → 4) + ReLU whose units 1 and 3 are ≤ 0 for every input with x ≥ 0."""
    lin = nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -1.0]]))
    return nn.Sequential(lin, nn.ReLU())


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def train_step(model: nn.Module, opt: Any, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 8, generator=g)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


# ------------------------------------------------------------------------------ the figures
def test_stats_of_a_relu_layer_with_known_dead_units(tmp_path: Any) -> None:
    model = known_layer()
    x = torch.tensor([[1.0, 2.0], [3.0, 0.5], [0.0, 1.0]])
    cap = FeatureCapture(patterns=["0", "1"], every=1, model=model, run_dir=tmp_path)
    cap.step(0)  # arms the hooks for step 1
    model(x)
    cap.step(1)
    (rec,) = records(os.fspath(tmp_path))
    assert rec["step"] == 1 and set(rec["layers"]) == {"0", "1"}

    out = model[1](model[0](x))  # what the ReLU returned
    relu = rec["layers"]["1"]
    assert relu["dead"] == 0.5  # units 1 and 3 never fire
    assert relu["mean"] == pytest.approx(out.mean().item(), rel=1e-6)
    assert relu["std"] == pytest.approx(out.std(unbiased=False).item(), rel=1e-5)
    assert relu["max_abs"] == 4.0  # unit 2: 2 * 2
    assert relu["norm"] == pytest.approx(out.norm().item(), rel=1e-6)
    # the linear layer's pre-activations: the same units are never positive
    lin_out = model[0](x)
    lin = rec["layers"]["0"]
    assert lin["dead"] == 0.5
    assert lin["max_abs"] == pytest.approx(lin_out.abs().max().item())
    assert list(relu) == list(STATS)


def test_activation_stats_conv_channels_and_unit_dim() -> None:
    x = torch.ones(2, 3, 4, 4)
    x[:, 1] = -1.0  # channel 1 is dead everywhere
    x[0, 2, 0, 0] = -5.0  # channel 2 has one negative value but is alive
    stats = activation_stats(x)
    assert list(stats) == list(STATS)
    mean, std, max_abs, dead, norm = stats.values()
    assert dead == pytest.approx(1 / 3)
    assert max_abs == 5.0
    assert mean == pytest.approx(x.mean().item())
    assert std == pytest.approx(x.std(unbiased=False).item(), rel=1e-5)
    assert norm == pytest.approx(x.norm().item())
    # (N, T, F): units are the last dimension unless told otherwise
    seq = torch.zeros(2, 5, 4)
    seq[..., 0] = 1.0
    assert activation_stats(seq)["dead"] == 0.75
    assert activation_stats(seq, unit_dim=1)["dead"] == 0.0  # every time step has a 1
    # no graph, nothing kept alive; non-finite figures are None
    y = torch.randn(4, 3, requires_grad=True) * 2
    assert activation_stats(y)["norm"] == pytest.approx(y.norm().item(), rel=1e-5)
    z = torch.tensor([[1.0, float("nan")]])
    assert activation_stats(z)["mean"] is None


def test_select_modules_by_pattern_type_and_prefix() -> None:
    model = nn.Sequential()
    model.add_module("layers", nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))
    model.add_module("head", nn.Linear(2, 1))
    names = lambda **kw: [n for n, _ in select_modules(model, **kw)]  # noqa: E731
    assert names() == ["layers.0", "layers.1", "layers.2", "head"]  # the leaves
    assert names(patterns=["layers.*"]) == ["layers.0", "layers.1", "layers.2"]
    assert names(types=["ReLU"]) == ["layers.1"]
    assert names(types=[nn.Linear], patterns=["layers.*"]) == ["layers.0", "layers.2"]
    assert names(types=["torch.nn.Linear"]) == ["layers.0", "layers.2", "head"]
    # a pattern matches under a prefix too (a Lightning module wrapping the model)
    outer = nn.Module()
    outer.model = model
    assert [n for n, _ in select_modules(outer, ["layers.?"])] == [
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
    ]
    assert [n for n, _ in select_modules(model, max_layers=2)] == ["layers.0", "layers.1"]


# ------------------------------------------------------------------------------ the schedule
def test_every_n_and_no_hooks_between_captures(tmp_path: Any) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cap = FeatureCapture(every=3, model=model, run_dir=tmp_path)
    attached = []
    for step in range(12):
        attached.append(hooks(model))  # during this step's forward
        train_step(model, opt, step)
        cap.step(step)
    assert [r["step"] for r in records(os.fspath(tmp_path))] == [3, 6, 9]
    # hooks only during the forward of a capture step, and gone after it
    assert [s for s, n in enumerate(attached) if n] == [3, 6, 9]
    assert all(n == 3 for n in attached if n)
    assert hooks(model) == 3  # step 11 armed them for step 12
    assert cap.captures == 3 and cap.last is not None and cap.last["step"] == 9
    cap.close()
    assert hooks(model) == 0


def test_eval_forward_is_not_recorded_as_training(tmp_path: Any) -> None:
    model = known_layer()
    cap = FeatureCapture(every=2, model=model, run_dir=tmp_path)
    cap.step(1)  # arms for step 2
    model.eval()
    model(torch.tensor([[100.0, 100.0]]))  # a validation forward in between
    assert hooks(model) == 2  # still armed
    model.train()
    model(torch.tensor([[1.0, 1.0]]))
    cap.step(2)
    (rec,) = records(os.fspath(tmp_path))
    assert rec["layers"]["1"]["max_abs"] == 2.0  # the training batch, not the eval one


def test_default_every_and_bad_parameters() -> None:
    assert FeatureCapture().every == DEFAULT_EVERY
    with pytest.raises(ValueError, match="every must be"):
        FeatureCapture(every=0)
    cap = FeatureCapture(patterns="a.*, b")
    assert cap.patterns == ["a.*", "b"]
    with pytest.raises(AttributeError, match="no parameter 'lr'"):
        cap.set_params(lr=1)
    with pytest.raises(ValueError, match="every must be"):
        cap.set_params(every=-1, patterns=["x"])
    assert cap.patterns == ["a.*", "b"]  # nothing changed by the refused call
    # a negative cap hooked nothing, and the warnings blamed the patterns
    with pytest.raises(ValueError, match=r"max_layers must be an integer >= 0 \(0: no limit\)"):
        FeatureCapture(max_layers=-1)
    with pytest.raises(ValueError, match="max_layers must be"):
        cap.set_params(max_layers=-1)
    assert cap.max_layers == DEFAULT_MAX_LAYERS
    # `cb set_params feats train_only=no`: bool("no") turned it on
    with pytest.raises(ValueError, match="train_only must be true or false, got 'no'"):
        cap.set_params(train_only="no")
    cap.set_params(train_only=False)
    assert cap.train_only is False


def test_non_leader_rank_writes_nothing(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("RANK", "1")
    model = mlp()
    cap = FeatureCapture(every=1, model=model, run_dir=tmp_path)
    for step in range(3):
        model(torch.randn(2, 8))
        cap.step(step)
    assert not os.path.exists(tmp_path / FEATURES)
    assert FeatureCapture.rank_zero_only  # under the kernel, other ranks never run it


def test_non_leader_rank_under_the_kernel_captures_nothing(run_dir: str) -> None:
    model = mlp()
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    HotClient(run_dir).cb_load(
        "feats", path="hotcb.features", symbol="FeatureCapture", init={"every": 2}
    )
    kernel.apply({"step": 0, "model": model})  # loaded
    kernel.is_leader = False  # what the kernel sets on rank 1 under torch.distributed
    for step in range(1, 8):
        assert hooks(model) == 0
        model(torch.randn(2, 8))
        kernel.apply({"step": step, "model": model})
    assert not os.path.exists(os.path.join(run_dir, FEATURES))
    kernel.is_leader = True
    kernel.close()


# ------------------------------------------------------------------------------ live, for real
class Loop:
    """A real training loop with a real HotKernel on ``run_dir``."""

    def __init__(self, run_dir: str) -> None:
        self.model = mlp()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.kernel = HotKernel(run_dir, poll_interval_sec=0.0)
        self.step = 0
        self.hooks_during: dict[int, int] = {}

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.hooks_during[self.step] = hooks(self.model)
            train_step(self.model, self.opt, self.step)
            self.kernel.apply({"step": self.step, "model": self.model, "optimizer": self.opt})
            self.step += 1

    def ledger(self, cmd_id: str) -> dict[str, Any]:
        path = os.path.join(self.kernel.run_dir, "hotcb.applied.jsonl")
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return next(e for e in entries if e.get("cmd_id") == cmd_id)


def test_live_load_disable_enable_set_unload_with_the_kernel(run_dir: str) -> None:
    loop = Loop(run_dir)
    loop.run(3)
    client = HotClient(run_dir)
    cid = client.cb_load(
        "feats",
        path="hotcb.features",
        symbol="FeatureCapture",
        init={"patterns": ["0", "1"], "every": 4},
    )
    loop.run(1)  # step 3: loaded
    assert loop.ledger(cid)["decision"] == "applied"
    loop.run(10)  # steps 4..13
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [4, 8, 12]
    assert all(set(r["layers"]) == {"0", "1"} and r["id"] == "feats" for r in recs)
    assert loop.hooks_during[8] == 2 and loop.hooks_during[9] == 0

    # disable at the end of step 15, just before the capture step 16 would be armed
    loop.run(1)  # step 14
    cid = client.cb("disable", "feats")
    loop.run(1)  # step 15: disabled
    assert loop.ledger(cid)["decision"] == "applied"
    assert hooks(loop.model) == 0
    loop.run(10)  # steps 16..25
    assert [r["step"] for r in records(run_dir)] == [4, 8, 12]
    assert hooks(loop.model) == 0 and set(loop.hooks_during.values()) <= {0, 2}

    # disabled while armed: the hooks fire once more and remove themselves; nothing written
    client.cb("enable", "feats")
    loop.run(2)  # steps 26, 27 (27 arms for 28)
    assert hooks(loop.model) == 2
    client.cb("disable", "feats")
    loop.run(1)  # step 28: the forward fired the hooks, then the disable landed
    assert hooks(loop.model) == 0
    loop.run(4)
    assert [r["step"] for r in records(run_dir)] == [4, 8, 12]

    # on again, with new parameters
    client.cb("enable", "feats")
    cid = client.cb("set_params", "feats", every=2, patterns=["2"])
    loop.run(5)  # steps 33..37
    assert loop.ledger(cid)["decision"] == "applied"
    new = [r for r in records(run_dir) if r["step"] > 12]
    assert [r["step"] for r in new] == [34, 36]
    assert all(list(r["layers"]) == ["2"] for r in new)

    # unload while armed removes the hooks at once
    assert hooks(loop.model) == 1  # armed for 38
    client.send("cb", "unload", id="feats")
    loop.run(1)
    assert hooks(loop.model) == 0
    loop.kernel.close()


def test_a_unit_dim_that_does_not_fit_never_breaks_the_forward_pass(run_dir: str) -> None:
    """`cb set_params feats unit_dim=5` on 2-d outputs: the hook raised IndexError inside the
    user's forward pass, and the training process died. The failure is now the callback's
    own error, ledgered (and auto-disabled like any other), and the loop goes on."""
    loop = Loop(run_dir)
    loop.run(1)
    client = HotClient(run_dir)
    client.cb_load("feats", path="hotcb.features", symbol="FeatureCapture",
                   init={"patterns": ["0", "1"], "every": 2})  # fmt: skip
    cid = client.cb("set_params", "feats", unit_dim=5)
    loop.run(12)  # raised IndexError out of model(x) before the fix
    assert loop.ledger(cid)["decision"] == "applied"
    path = os.path.join(run_dir, "hotcb.applied.jsonl")
    with open(path) as f:
        errors = [e for e in map(json.loads, f) if e.get("op") == "callback_error"]
    assert errors and "unit_dim 5 does not fit an output of 2 dims" in errors[0]["error"]
    bad = client.cb("set_params", "feats", unit_dim=True)
    loop.run(1)
    assert loop.ledger(bad)["decision"] in ("rejected", "failed")
    assert "unit_dim must be an integer" in loop.ledger(bad)["error"]
    loop.kernel.close()


@pytest.mark.slow
def test_cli_loads_and_disables_it(run_dir: str, cli: Any) -> None:
    loop = Loop(run_dir)
    loop.run(2)
    out = cli(
        run_dir,
        "cb",
        "load",
        "feats",
        "--path",
        "hotcb.features",
        "--symbol",
        "FeatureCapture",
        "--init",
        'patterns=["1"]',
        "every=5",
    )
    assert out.returncode == 0, out.stderr
    loop.run(20)  # steps 2..21
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    assert list(recs[0]["layers"]) == ["1"]
    out = cli(run_dir, "cb", "disable", "feats")
    assert out.returncode == 0, out.stderr
    loop.run(10)
    assert [r["step"] for r in records(run_dir)] == [5, 10, 15, 20]
    assert hooks(loop.model) == 0
    loop.kernel.close()


@pytest.mark.slow
def test_lightning_adapter_gives_it_the_model(run_dir: str) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from hotcb.adapters.lightning import HotCBLightning

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            (x,) = batch
            return self.net(x).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(20 * 8, 8)), batch_size=8
    )
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    HotClient(run_dir).cb_load(
        "feats",
        path="hotcb.features",
        symbol="FeatureCapture",
        init={"patterns": "net.*", "every": 5},
    )
    module = Module()
    trainer = pl.Trainer(
        callbacks=[HotCBLightning(kernel)],
        max_steps=20,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    kernel.close()
    recs = records(run_dir)
    # Lightning's step is global_step (1 after the first optimizer step)
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    # the LightningModule is env["model"]: names carry its attribute, "net.*" matches them
    assert list(recs[0]["layers"]) == ["net.0", "net.1", "net.2"]
    assert hooks(module) == 0


def test_the_docs_example_runs(tmp_path: Any, monkeypatch: Any) -> None:
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "features.md"
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S) if "cap.step" in b
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(doc), "exec"), {})
    recs = read_features(os.fspath(tmp_path / "runs" / "feat-demo"))[0]
    assert [r["step"] for r in recs] == list(range(10, 100, 10))


def test_it_is_bundled_so_a_run_that_loads_no_code_still_loads_it(run_dir: str) -> None:
    """FeatureCapture ships with hotcb: a kernel with ``allow_code_load=False`` (the dashboard's
    default) loads it by name from the bundled callbacks, and refuses the module path."""
    loop = Loop(run_dir)
    loop.kernel.close()
    loop.kernel = HotKernel(run_dir, poll_interval_sec=0.0, allow_code_load=False)
    client = HotClient(run_dir)
    bundled = client.cb_load("feats", path="hotcb.modules.cb.callbacks", symbol="FeatureCapture",
                             init={"every": 2, "patterns": ["0"]})  # fmt: skip
    direct = client.cb_load("other", path="hotcb.features", symbol="FeatureCapture")
    loop.run(5)
    assert loop.ledger(bundled)["decision"] == "applied"
    assert loop.ledger(direct)["decision"] == "rejected"
    assert [r["step"] for r in records(run_dir)] == [2, 4]
    loop.kernel.close()


def test_a_checkpoint_brings_it_back_with_its_parameters(tmp_path: Any) -> None:
    first = Loop(os.fspath(tmp_path / "a"))
    client = HotClient(first.kernel.run_dir)
    client.cb_load("feats", path="hotcb.features", symbol="FeatureCapture", init={"every": 4})
    client.cb("set_params", "feats", every=3, patterns=["0"])
    first.run(2)
    state = first.kernel.state_dict()
    first.kernel.close()

    second = Loop(os.fspath(tmp_path / "b"))
    second.kernel.load_state_dict(state)
    second.step = 2
    second.run(5)  # steps 2..6
    cap = second.kernel.module("cb").get("feats")
    assert cap.every == 3 and cap.patterns == ["0"]
    assert [(r["step"], list(r["layers"])) for r in records(second.kernel.run_dir)] == [
        (3, ["0"]),
        (6, ["0"]),
    ]
    second.kernel.close()


@pytest.mark.slow
def test_hf_trainer_adapter_gives_it_the_model(run_dir: str) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "hf_tiny.py"
    spec = importlib.util.spec_from_file_location("hf_tiny_features", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    trainer, kernel = example.build(run_dir, 12)
    HotClient(run_dir).cb_load(
        "feats",
        path="hotcb.features",
        symbol="FeatureCapture",
        init={"patterns": ["*.output.dense"], "types": ["Linear"], "every": 4},
    )
    trainer.train()
    kernel.close()
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [4, 8, 12]  # the Trainer's global_step
    names = list(recs[0]["layers"])
    assert names and all(n.startswith("bert.encoder.layer.") for n in names)
    assert all(r["layers"][n]["norm"] > 0 for r in recs for n in names)
    assert hooks(trainer.model) == 0


def test_a_pattern_that_matches_nothing_is_said_in_the_ledger(run_dir: str) -> None:
    """A typo among the patterns (or only typos) captures nothing from those layers: the
    ledger says which pattern and shows the model's module names, instead of silence."""
    loop = Loop(run_dir)
    loop.run(1)
    client = HotClient(run_dir)
    client.cb_load("feats", path="hotcb.features", symbol="FeatureCapture",
                   init={"patterns": ["0", "layer.*"], "every": 2})  # fmt: skip
    client.cb_load("none", path="hotcb.features", symbol="FeatureCapture",
                   init={"patterns": ["fc*"], "every": 2})  # fmt: skip
    loop.run(4)
    loop.kernel.close()
    with open(os.path.join(run_dir, "hotcb.applied.jsonl")) as f:
        said = {e["id"]: e["error"] for e in map(json.loads, f)
                if e.get("module") == "cb" and e.get("op") == "capture"}  # fmt: skip
    assert said["feats"] == (
        "FeatureCapture: pattern(s) 'layer.*' match no module of Sequential (its modules: 0, 1, 2)"
    )
    assert said["none"].startswith("FeatureCapture: no module of Sequential matches")
    assert said["none"].endswith("(its modules: 0, 1, 2)")
    assert {r["id"] for r in records(run_dir)} == {"feats"}  # the good pattern still captures
