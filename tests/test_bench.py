"""The benchmark harness on a tiny model: it runs and its report is well formed (no timing asserts)."""
import json

import pytest
import torch

from fastvar import load_pipeline
from fastvar.cli import main
from fastvar.eval.bench import token_linear_params, transformer_flops


def test_work_count_by_hand():
    # One block with C=4: linear weights counted per token (ada_lin excluded), attention 4*C per (query, key) pair.
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.C = 4
            self.attn = torch.nn.Linear(4, 12, bias=False)  # 48 weights
            self.ada_lin = torch.nn.Linear(4, 24)  # excluded: per image, not per token

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block()])

    assert token_linear_params(Model().blocks[0]) == 48
    stats = {"steps": [{"step": 0, "tokens": 1, "skipped": False, "rows": 2},
                       {"step": 1, "tokens": 4, "skipped": False, "rows": 2, "kept_per_layer": {"0": 2}},
                       {"step": 2, "tokens": 16, "skipped": True, "rows": 0}]}
    # step 0: 1 query, 1 key; step 1: 2 queries, 3 keys; 2 rows (CFG)
    expected = 2 * ((2 * 48 * 1 + 4 * 4 * 1 * 1) + (2 * 48 * 2 + 4 * 4 * 2 * 3))
    assert transformer_flops(Model(), stats) == expected
    # a 3-token prefix at step 0 (HART's context): 4 queries and keys there, then 2 queries over 6 keys
    with_prefix = 2 * ((2 * 48 * 4 + 4 * 4 * 4 * 4) + (2 * 48 * 2 + 4 * 4 * 2 * 6))
    assert transformer_flops(Model(), stats, prefix_tokens=3) == with_prefix
    # step 2 computed without guidance: 1 row, 16 queries over 3 + 16 keys
    stats["steps"][2] = {"step": 2, "tokens": 16, "skipped": False, "rows": 1}
    assert transformer_flops(Model(), stats) == expected + 1 * (2 * 48 * 16 + 4 * 4 * 16 * 19)


def test_bench_cli_smoke(golden_var, tmp_path, capsys):
    r = golden_var.root
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
                 "--transformer", str(r / "var.pth"), "--pruning", "none|0.5,1", "--batch", "2",
                 "--warmup", "1", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    env = report["environment"]
    assert env["command"].startswith("fastvar bench --model var") and env["torch"] == torch.__version__
    assert env["cpu_threads"] == torch.get_num_threads() and env["cpu"]
    assert [row["pruning"] for row in rows] == ["none", "0.5,1"]
    assert rows[0]["speedup_loop"] == 1.0 and rows[1]["tokens_forwarded"] < rows[0]["tokens_forwarded"]
    assert rows[1]["stats"]["skipped_steps"] == [6]
    assert all(row["transformer_tflop"] > 0 and row["total_ms_median"] >= row["loop_ms_median"] for row in rows)
    assert "| config |" in capsys.readouterr().out
    for row in rows:  # the stages partition the call: condition, loop (blocks + sampling), decode, rest
        parts = [row[f"{k}_ms_median"] for k in ("condition", "blocks", "sampling", "decode")]
        assert all(v > 0 for v in parts) and row["rest_ms_median"] > -0.01
        assert row["blocks_ms_median"] + row["sampling_ms_median"] == pytest.approx(row["loop_ms_median"])
        assert sum(parts) <= row["total_ms_median"] + 0.01
        computed = [s for s in row["stats"]["steps"] if not s["skipped"]]
        assert all(0 < s["blocks_ms"] <= s["ms"] for s in computed)
        assert list(row["stats"]["stages_ms"]) == ["condition", "loop", "decode"]


def test_weights_reported_are_the_checkpoints_tensors(golden_var, tmp_path):
    """The transformer and VAE weights the report counts are the official files' tensors, less the derived buffers
    fastvar recomputes (VAR's lvl_1L, attn_bias_for_masking, zero_k_bias; the VQ-VAE's EMA hit counts)."""
    r = golden_var.root

    def file_mb(name: str, derived: tuple[str, ...]) -> float:
        sd = torch.load(r / name, map_location="cpu", weights_only=True)
        return sum(t.numel() * t.element_size() for k, t in sd.items() if not any(d in k for d in derived)) / 2**20

    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
                 "--transformer", str(r / "var.pth"), "--warmup", "0", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    weights = result["weights_mb"]
    derived = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias")
    assert weights["transformer"] == pytest.approx(file_mb("var.pth", derived))
    assert weights["vae"] == pytest.approx(file_mb("vae.pth", ("ema_vocab_hit_SV",)))
    assert result["peak_above_weights_mb"] == pytest.approx(result["peak_memory_mb"] - sum(weights.values()), abs=0.1)


def test_bench_infinity_random_weights_reports_pruned_work(golden_infinity, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "infinity", "--config", str(golden_infinity.root / "config.json"),
                 "--random-weights", "--resolutions", "256", "--pruning", "none|infinity-paper",
                 "--warmup", "0", "--repeats", "1", "--out", str(out)]) == 0
    base, pruned = json.loads(out.read_text())["results"]
    # 0.06M schedule 1..16 (521 tokens); the preset prunes block 3 of 4 at 6x6 / 8x8 and skips 12x12 and 16x16
    assert base["tokens_forwarded"] == 521
    assert pruned["tokens_forwarded"] == 1 + 4 + 16 + (3 * 36 + 22) / 4 + (3 * 64 + 32) / 4
    assert pruned["transformer_tflop"] < base["transformer_tflop"]
    assert all(list(r["stats"]["stages_ms"]) == ["condition", "loop", "decode"] for r in (base, pruned))


def test_untimed_calls_record_no_times(golden_hart):
    pipe = load_pipeline("hart", vae=golden_hart.root / "tokenizer", transformer=golden_hart.root / "llm")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt_embeds=golden_hart["inputs.context"], seed=0, scale_schedule=[1, 2], output_type="pt")
    plain, timed = pipe(**kwargs), pipe(**kwargs, timed=True)
    assert "stages_ms" not in plain.stats and all("ms" not in s for s in plain.stats["steps"])
    assert list(timed.stats["stages_ms"]) == ["condition", "loop", "decode"]
    assert all(0 < s["blocks_ms"] <= s["ms"] for s in timed.stats["steps"])
    assert torch.equal(plain.images, timed.images)  # timing changes nothing
