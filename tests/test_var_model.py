"""VAR architecture facts: released sizes, official key layout, strict loading errors, CLI behaviour."""
from __future__ import annotations

import json
import re

import pytest
import torch

from fastvar import CheckpointError, FastVARError, load_pipeline
from fastvar.backbones.var.config import CONFIGS, load_spec
from fastvar.backbones.var.model import VAR
from fastvar.backbones.var.pipeline import VAR_DERIVED
from fastvar.backbones.var.vqvae import VQVAE
from fastvar.cli import main


def build_meta(spec):
    with torch.device("meta"):
        vae = VQVAE(spec.vae)
        return vae, VAR(spec.var, vae)


# Parameter counts published in the official VAR README model zoo (310M, 600M, 1.0B, 2.0B, 2.3B).
@pytest.mark.parametrize("name,published", [("var-d16", 310e6), ("var-d20", 600e6), ("var-d24", 1.0e9),
                                            ("var-d30", 2.0e9), ("var-d36", 2.3e9)])
def test_release_parameter_counts(name, published):
    _, model = build_meta(CONFIGS[name])
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - published) / published < 0.05  # the README rounds loosely (d24: 1.033B is listed as 1.0B)


def test_d16_is_310_3m():
    _, model = build_meta(CONFIGS["var-d16"])
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 310.3


def official_var_keys(golden_keys: list, depth: int) -> set[str]:
    """The golden (depth 2) official key list, with the block keys repeated for ``depth`` blocks."""
    keys = set()
    for key, _, _ in golden_keys:
        m = re.match(r"blocks\.0\.(.*)", key)
        if m:
            keys |= {f"blocks.{i}.{m.group(1)}" for i in range(depth)}
        elif not key.startswith("blocks."):
            keys.add(key)
    return keys


def test_d16_key_set_equals_official(golden_var):
    golden_keys = json.loads((golden_var.root / "keys.json").read_text())["var"]
    _, model = build_meta(CONFIGS["var-d16"])
    derived = re.compile("|".join(VAR_DERIVED))
    official = official_var_keys(golden_keys, 16)
    assert set(model.state_dict()) == {k for k in official if not derived.fullmatch(k)}
    assert all(derived.fullmatch(k) for k in official - set(model.state_dict()))


def test_golden_keys_load_exactly(golden_var):
    sd = torch.load(golden_var.root / "var.pth", weights_only=True)
    spec = load_spec(golden_var.root / "config.json")
    _, model = build_meta(spec)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in sd.items() if k in ours}


def test_wrong_key_is_an_error_naming_it(golden_var, tmp_path):
    sd = torch.load(golden_var.root / "var.pth", weights_only=True)
    sd["head.weight_renamed"] = sd.pop("head.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing: head\.weight.*unexpected: head\.weight_renamed"):
        load_pipeline("var", vae=golden_var.root / "vae.pth", transformer=tmp_path / "bad.pth",
                      config=golden_var.root / "config.json")


def test_wrong_size_suggests_release(golden_var):
    with pytest.raises(CheckpointError, match="depth 2, width 64"):
        load_pipeline("var", vae=golden_var.root / "vae.pth", transformer=golden_var.root / "var.pth",
                      config={"vae_kwargs": golden_var.config["vae_kwargs"],
                              "var_kwargs": {**golden_var.config["var_kwargs"], "depth": 3}})


def test_unknown_config_argument_is_rejected(golden_var):
    with pytest.raises(FastVARError, match="unknown VAR argument"):
        load_spec({"vae_kwargs": golden_var.config["vae_kwargs"],
                   "var_kwargs": {**golden_var.config["var_kwargs"], "dept": 3}})


def test_pruning_none_and_disabled_are_bit_identical(golden_var):
    from fastvar import PruningSchedule

    root = golden_var.root
    pipe = load_pipeline("var", vae=root / "vae.pth", transformer=root / "var.pth", config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(class_labels=[4, 1], seed=3, top_k=6, top_p=0.9, output_type="pt", return_tokens=True)
    base = pipe(**kw)
    off = pipe(pruning=PruningSchedule(ratios=(0.5, 0.5), enabled=False), **kw)
    none = pipe(pruning="none", **kw)
    for other in (off, none):
        assert torch.equal(base.images, other.images)
        assert all(torch.equal(a, b) for a, b in zip(base.tokens, other.tokens))


def test_var_pruning_runs_and_reports(golden_var):
    root = golden_var.root
    pipe = load_pipeline("var", vae=root / "vae.pth", transformer=root / "var.pth", config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[4, 1, 7], seed=3, pruning="0.5,1", output_type="pt", return_tokens=True)
    assert out.images.shape == (3, 3, 112, 112)
    assert out.stats["skipped_steps"] == [6] and out.stats["pruned_steps"] == [5]
    assert out.stats["steps"][5]["kept_per_layer"] == {"0": 18, "1": 18}  # 36 - int(36 * 0.5)
    assert len(out.tokens) == 6


@pytest.fixture
def golden_args(golden_var):
    r = golden_var.root
    return ["--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
            "--transformer", str(r / "var.pth"), "--quiet"]


def test_cli_generate_writes_images(golden_args, tmp_path):
    assert main(["generate", *golden_args, "--class", "1", "--class", "8", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x_0.png").exists() and (tmp_path / "x_1.png").exists()


@pytest.mark.parametrize("extra,message", [
    (["--class", "10"], "out of range"),
    (["--class", "1", "--top-p", "1.5"], "top_p"),
    (["--class", "1", "--pruning", "0.4,x"], "bad pruning schedule"),
    (["--class", "1", "--pruning", "nonsense"], "unknown pruning preset"),
    (["--class", "1", "--pruning", "0.5;layers=0:9"], "outside the model"),
    (["--class", "1", "--pruning", "0.5,0.5,0.5,0.5,0.5,0.5,0.5"], "only 7 steps"),
])
def test_cli_bad_input_is_one_clear_line(golden_args, extra, message, capsys, tmp_path):
    assert main(["generate", *golden_args, *extra, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_missing_and_corrupt_checkpoint(golden_args, tmp_path, capsys):
    args = list(golden_args)
    args[args.index("--transformer") + 1] = str(tmp_path / "missing.pth")
    assert main(["generate", *args, "--class", "1"]) == 2
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    args[args.index("--transformer") + 1] = str(tmp_path / "corrupt.pth")
    assert main(["generate", *args, "--class", "1"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "cannot read" in err


def test_cli_info(golden_var, capsys):
    assert main(["info", str(golden_var.root / "var.pth"), str(golden_var.root / "vae.pth")]) == 0
    out = capsys.readouterr().out
    assert "VAR transformer" in out and "VAR VQ-VAE" in out and "depth: 2" in out


def test_safetensors_checkpoints_load_and_match(golden_var, tmp_path):
    from safetensors.torch import save_file

    root = golden_var.root
    for name in ("vae", "var"):
        sd = torch.load(root / f"{name}.pth", weights_only=True)
        save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(tmp_path / f"{name}.safetensors"))
    kw = dict(class_labels=[1, 8], seed=0, cfg=4.0, top_k=1, top_p=0.0, output_type="pt", return_tokens=True)
    a = load_pipeline("var", vae=tmp_path / "vae.safetensors", transformer=tmp_path / "var.safetensors",
                      config=root / "config.json")
    a.set_progress_bar_config(disable=True)
    for k, tokens in enumerate(a(**kw).tokens):
        assert torch.equal(tokens, golden_var[f"ar_greedy_cfg4.idx.s{k}"])


def test_bfloat16_transformer_runs(golden_var):
    root = golden_var.root
    pipe = load_pipeline("var", vae=root / "vae.pth", transformer=root / "var.pth", config=root / "config.json",
                         dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[1, 8], seed=0, cfg=4.0, top_k=1, top_p=0.0, output_type="pt", return_tokens=True)
    assert out.images.dtype == torch.float32 and out.images.shape == (2, 3, 112, 112)
    # bf16 keeps the coarse decisions of the fp32 reference (the first scales have large logit gaps)
    assert torch.equal(out.tokens[0], golden_var["ar_greedy_cfg4.idx.s0"])


def test_cli_eval_reports_fidelity_table(golden_args, tmp_path, capsys):
    js, grid = tmp_path / "e.json", tmp_path / "grid.png"
    assert main(["eval", *golden_args, "--class", "1", "--seeds", "0-1", "--top-k", "6", "--top-p", "0.9",
                 "--schedules", "var-fastvar|1|0.5,0.75;granularity=block", "--json", str(js), "--grid", str(grid)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert [r["schedule"] for r in rows] == ["none (baseline)", "var-fastvar", "1", "0.5,0.75;granularity=block"]
    assert rows[0]["tokens_forwarded"] == 140 and rows[2]["tokens_forwarded"] == 91  # 140 - 49 (last step skipped)
    assert rows[1]["tokens_forwarded"] == 140 - 36 - 49 + 18 + 13  # 6x6 keeps 36 - int(18) = 18, 7x7 49 - int(36.75)
    assert 0 < rows[1]["detail_ratio_mean"] < float("inf")  # reported, finite
    # steps before the first pruned one are computed identically
    assert all(v == 1.0 for s, v in rows[1]["token_agreement_per_step"].items() if int(s) < 5)
    assert grid.exists() and "| 1 |" in capsys.readouterr().out


def test_cli_save_masks_writes_pruned_token_maps(golden_args, tmp_path):
    from PIL import Image

    out = tmp_path / "a.png"
    assert main(["generate", *golden_args, "--class", "1", "--pruning", "0.5,0.75", "--save-masks",
                 str(tmp_path / "masks"), "--out", str(out)]) == 0
    files = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert files == ["a_step5_6x6.png", "a_step6_7x7.png"]
    assert Image.open(tmp_path / "masks" / files[0]).size == (224, 224)  # 112 px enlarged x2
    assert main(["generate", *golden_args, "--class", "1", "--save-masks", str(tmp_path / "m2"),
                 "--out", str(out)]) == 2  # nothing pruned: a clear error


def test_cli_draws_labels_per_batch_like_the_official_sampler(golden_args, golden_var, tmp_path):
    """--num-images 3 --batch-size 2: batch k draws its labels and tokens with seed + k, as one official call would."""
    import numpy as np
    from PIL import Image

    assert main(["generate", *golden_args, "--num-images", "3", "--batch-size", "2", "--seed", "4", "--quiet",
                 "--out", str(tmp_path / "v.png")]) == 0
    root = golden_var.root
    pipe = load_pipeline("var", vae=root / "vae.pth", transformer=root / "var.pth", config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(num_images=2, seed=4).images + pipe(num_images=1, seed=5).images
    for i, image in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"v_{i}.png")), np.asarray(image))
    assert main(["generate", *golden_args, "--num-images", "0", "--out", str(tmp_path / "w.png")]) == 2
    assert main(["generate", *golden_args, "a dog", "--out", str(tmp_path / "w.png")]) == 2  # no silent prompt
    assert main(["generate", "a red apple", "--class", "3", "--out", str(tmp_path / "w.png")]) == 2  # text model
    assert main(["generate", "a red apple", "--num-images", "2", "--out", str(tmp_path / "w.png")]) == 2


def test_kv_and_restoration_caches_are_freed_before_decoding(golden_var):
    root = golden_var.root
    pipe = load_pipeline("var", vae=root / "vae.pth", transformer=root / "var.pth", config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    state = pipe.model.prepare(torch.tensor([1, 8]), cfg=4.0, top_k=1, top_p=0.0, more_smooth=False)
    tokens, ctx = pipe.run(state, pipe.model.scales, pruning="var-fastvar", generator=None)
    assert len(tokens) == 7 and ctx.kv == {} and ctx.pruning_state == {}  # freed: the VAE decodes next
    assert sorted(ctx.kept_masks) == [5, 6] and ctx.kept_masks[6].shape == (2, 7, 7)  # the 2 images' maps stay
    assert ctx.kept_masks[6].sum() == 2 * (49 - int(49 * 0.75))


def test_options_a_backbone_lacks_are_errors_not_ignored(golden_args, tmp_path):
    from fastvar.cli import build_parser, sampling_kwargs

    out = str(tmp_path / "x.png")
    for extra in (["--aspect", "16:9"], ["--resolution", "512"], ["--tau", "0.5"]):
        assert main(["generate", *golden_args, "--class", "1", *extra, "--out", out]) == 2
    assert main(["generate", "a red apple", "--more-smooth", "--out", out]) == 2  # Infinity samples bits
    parse = lambda *a: build_parser().parse_args(["generate", *a])  # noqa: E731
    assert sampling_kwargs("hart", parse("--no-more-smooth")) == {"more_smooth": False}  # HART's official default: on
    assert sampling_kwargs("var", parse("--more-smooth", "--cfg", "2")) == {"more_smooth": True, "cfg": 2.0}
    assert sampling_kwargs("var", parse()) == {}  # unset: the backbone's own defaults
