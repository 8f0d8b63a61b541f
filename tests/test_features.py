"""Feature-space fidelity with a user's image network: the Fréchet distance on hand-computed sets, loading a feature
model from a TorchScript file or an import path, and ``fastvar eval --features`` on the demo model."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

from fastvar.cli import main
from fastvar.errors import FastVARError
from fastvar.eval.features import extract, frechet_distance, load_feature_model


def test_frechet_distance_by_hand():
    # 1-D: means 1 and 3, variances (N - 1) 2 and 8: (1 - 3)^2 + 2 + 8 - 2 sqrt(2 * 8) = 6
    assert frechet_distance(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [5.0]])) == pytest.approx(6.0)
    # 2-D, b = 3a + (1, -1): means (1, 1) and (4, 2), diagonal covariances 4/3 and 12:
    # (3^2 + 1^2) + 2 * 4/3 + 2 * 12 - 2 * 2 * sqrt(4/3 * 12)
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    b = a * 3 + torch.tensor([1.0, -1.0])
    assert frechet_distance(a, b) == pytest.approx(10 + 8 / 3 + 24 - 16)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_ignores_a_rotation_of_the_features():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 5, generator=g, dtype=torch.float64), torch.randn(50, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    with pytest.raises(FastVARError, match="N >= 2"):
        frechet_distance(a[:1], b[:1])


class ChannelStats(nn.Module):
    """A stand-in feature network: per-channel mean and standard deviation (6 features)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat((images.mean(dim=(2, 3)), images.std(dim=(2, 3))), dim=1)


def channel_stats(images: torch.Tensor) -> torch.Tensor:
    return ChannelStats()(images)


@pytest.fixture
def scripted(tmp_path):
    path = tmp_path / "features.pt"
    torch.jit.script(ChannelStats()).save(str(path))
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_feature_models_load_from_torchscript_or_an_import_path(scripted, tmp_path, monkeypatch):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = ChannelStats()(images).double()
    assert torch.equal(extract(load_feature_model(str(scripted), torch.device("cpu")), images), want)
    monkeypatch.setitem(sys.modules, "my_features", sys.modules[__name__])
    assert torch.equal(extract(load_feature_model("my_features:channel_stats", torch.device("cpu")), images), want)
    (tmp_path / "notes.txt").write_text("not a model")
    for spec, message in ((str(tmp_path / "notes.txt"), "as TorchScript"), ("no_such_module:f", "cannot import"),
                          ("missing.pt", "neither a file"), ("my_features:ChannelStats.__doc__", "cannot import")):
        with pytest.raises(FastVARError, match=message):
            load_feature_model(spec, torch.device("cpu"))
    with pytest.raises(FastVARError, match=r"\(B, D\) features"):
        extract(lambda x: x.mean(), images)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_cli_eval_reports_feature_fidelity(scripted, tmp_path):
    table = tmp_path / "eval.json"
    assert main(["eval", "--model", "demo", "a red apple", "--seeds", "0-1", "--schedules", "none|0.5,1",
                 "--features", str(scripted), "--quiet", "--json", str(table)]) == 0
    _, same, pruned = json.loads(table.read_text())["rows"]
    assert same["feature_cosine_mean"] == pytest.approx(1.0) and same["frechet_distance"] == pytest.approx(0, abs=1e-9)
    assert pruned["feature_cosine_mean"] < 1 and pruned["frechet_distance"] > 0
    assert not math.isnan(pruned["frechet_distance"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_cli_eval_measures_the_distance_to_reference_images(scripted, tmp_path, capsys):
    """Reference images = the unaccelerated demo images themselves (saved as PNG): the baseline is nearest to them."""
    reference = tmp_path / "reference"
    reference.mkdir()
    for seed in range(3):
        out = str(reference / f"{seed}.png")
        assert main(["generate", "a red apple", "--seed", str(seed), "--quiet", "--out", out]) == 0
    table = tmp_path / "eval.json"
    assert main(["eval", "--model", "demo", "a red apple", "--seeds", "0-2", "--schedules", "1", "--features",
                 str(scripted), "--reference-dir", str(reference), "--quiet", "--json", str(table)]) == 0
    baseline, skipped = json.loads(table.read_text())["rows"]
    assert baseline["frechet_distance_to_reference"] < 1e-4  # only the PNG's 8-bit rounding differs
    assert skipped["frechet_distance_to_reference"] > 100 * baseline["frechet_distance_to_reference"]
    assert "Fréchet distance to reference" in capsys.readouterr().out
    assert main(["eval", "--model", "demo", "a red apple", "--schedules", "1", "--reference-dir", str(reference)]) == 2
    assert main(["eval", "--model", "demo", "a red apple", "--schedules", "1", "--features", str(scripted),
                 "--reference-dir", str(tmp_path / "missing")]) == 2
