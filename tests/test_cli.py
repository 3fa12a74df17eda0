"""The command line end to end on synthetic data, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
from conftest import release_freed_memory, train_args

from naslora_deploy import build_sam
from naslora_deploy.cli import main
from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.training.settings import EMPTY_MASKS_HINT

SEARCH_FROM_EPOCH_2 = ("--epochs", "2", "--search-start", "1")  # two epochs, alpha searched in the second


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, multiclass_data):
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(train_args(multiclass_data, run, *SEARCH_FROM_EPOCH_2, "--lr", "1e-3", "--no-progress"))
    assert code == 0
    return run


def test_eval_writes_multiclass_metrics(trained_run, multiclass_data, tmp_path):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(trained_run), "--data", str(multiclass_data), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "test"
    assert set(result["metrics"]["per_class_iou"]) == {"background", "disc", "box"}
    assert 0.0 <= result["metrics"]["miou"] <= 1.0


def test_inspect_prints_the_architecture_and_plots(trained_run, tmp_path, capsys):
    plot = tmp_path / "shares.png"
    assert main(["inspect", str(trained_run), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["block", "proj", "sep3x3", "sep5x5"]
    assert [line.split()[1] for line in lines[1:4]] == ["q", "k", "v"]
    assert any(line.startswith("     share") for line in lines)
    assert "alpha's trajectory" in out and "no search ran" not in out  # this run searched from epoch 2
    assert plot.stat().st_size > 1000 and (tmp_path / "shares-trajectory.png").stat().st_size > 1000
    assert main(["inspect", str(trained_run), "--json", "-"]) == 0
    shares = json.loads(capsys.readouterr().out)["shares"]  # stdout holds only the JSON
    assert sum(shares.values()) == pytest.approx(1.0)


def test_merge_dense_writes_plain_sam_and_the_head(trained_run, tmp_path, capsys):
    out = tmp_path / "merged.pth"
    assert main(["merge", str(trained_run), "--mode", "dense", "--out", str(out)]) == 0
    reloaded = build_sam("vit_tiny", checkpoint=out)  # plain SAM keys and shapes, or this raises
    assert reloaded is not None
    report = json.loads((tmp_path / "merged.report.json").read_text())
    assert report["head"] == "multiclass" and report["merge"]["mode"] == "dense"
    assert report["merge"]["max_branch_rel_error"] > 0  # spatial ops: measured, not claimed exact
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "merged.head.safetensors"))
    assert any(k.startswith("class_head.class_mlp") for k in head)
    assert "wrote" in capsys.readouterr().out


def test_merge_dense_with_recovery(trained_run, multiclass_data, tmp_path, capsys):
    out = tmp_path / "recovered.pth"
    args = [
        "merge",
        str(trained_run),
        "--mode",
        "dense",
        "--out",
        str(out),
        "--calibration",
        str(multiclass_data),
    ]
    assert main([*args, "--calibration-images", "4", "--recover", "3"]) == 0
    build_sam("vit_tiny", checkpoint=out)  # plain SAM, strictly
    report = json.loads((tmp_path / "recovered.report.json").read_text())
    recovery = report["merge"]["recovery"]
    assert recovery["steps"] == 3 and recovery["images"] == 2 and not recovery["decoder"]
    assert "odd positions" in report["merge"]["measured_on"] and "none" in report["merge"]["mask_iou"]
    assert (tmp_path / "recovered.head.safetensors").is_file()
    assert "recovery: 3 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recover", "-1"], "--recover must be a whole number of steps >= 0, got '-1'"),
        (["--recover", "ten"], "--recover must be a whole number of steps >= 0, got 'ten'"),
        (["--recover", "5"], "--recover distils on unlabelled images: give them with --calibration"),
        (["--recover", "5", "--calibration", "."], None),  # with --mode fused below
        (["--recover-decoder"], "--recover-decoder needs --recover STEPS"),
    ],
    ids=["negative", "not-a-number", "no-calibration", "fused", "decoder-alone"],
)
@pytest.mark.parametrize("command", ["merge", "export"])
def test_bad_recover_values_give_one_line(command, extra, message, tmp_path):
    mode = ["--mode" if command == "merge" else "--merge", "fused" if message is None else "dense"]
    target = ["--out", str(tmp_path / ("x.pth" if command == "merge" else "art"))]
    result = _cli(command, "/nonexistent-adapter", *mode, *target, *extra)
    assert result.returncode == 2
    assert (message or "--recover tunes the dense fold; use it with the dense merge") in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_export_with_recovery(binary_adapter, binary_data, tmp_path, capsys):
    out = tmp_path / "art"
    args = ["export", str(binary_adapter), "--out", str(out), "--calibration", str(binary_data)]
    assert main([*args, "--calibration-images", "4", "--recover", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["merge"]["recover"] == 2 and manifest["merge"]["mode"] == "dense"
    assert manifest["merge"]["report"]["recovery"]["steps"] == 2
    assert "recovery: 2 steps" in capsys.readouterr().out


def test_export_spec_recovery_fields():
    from naslora_deploy.exporters.specs import ExportSpec

    spec = ExportSpec(merge=MergeSpec(calibration="images", recover=20, recover_decoder=True))
    assert ExportSpec.from_manifest({"export": spec.to_dict()}) == spec
    assert ExportSpec.from_manifest({"export": {"format": "onnx"}}).merge.recover == 0  # older manifests
    flat = {
        "format": "onnx",
        "merge": "dense",
        "calibration": "images",
        "recover": 20,
        "recover_decoder": True,
    }
    assert ExportSpec.from_manifest({"export": flat}) == spec  # manifests before MergeSpec
    with pytest.raises(ValueError, match="--recover tunes the dense fold"):
        ExportSpec(merge=MergeSpec(mode="fused", calibration="images", recover=20))


def test_merge_fused(trained_run, tmp_path):
    out = tmp_path / "fused.safetensors"
    assert main(["merge", str(trained_run), "--mode", "fused", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "fused.report.json").read_text())
    assert report["merge"]["embedding_rel_error"] <= 1e-5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "naslora_deploy", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--data", "/nonexistent", "--model", "vit_tiny", "--out", "x"],
            "data folder /nonexistent not found",
        ),
        (["eval", "/nonexistent", "--data", "."], "adapter directory /nonexistent not found"),
        (["inspect", "/nonexistent"], "adapter directory /nonexistent not found"),
        (
            ["merge", "/nonexistent", "--mode", "dense", "--out", "x.pth"],
            "adapter directory /nonexistent not found",
        ),
        (["train", "--data", ".", "--model", "vit_s", "--out", "x"], "unknown model 'vit_s'"),
    ],
)
def test_bad_input_gives_one_line(args, message):
    result = _cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_corrupt_training_image_is_named_before_training(binary_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(binary_data, data)
    victim = sorted((data / "train" / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])
    result = _cli(*train_args(data, tmp_path / "run", "--no-progress"))
    assert result.returncode == 2
    assert victim.name in result.stderr and "--skip-bad" in result.stderr
    assert not (tmp_path / "run" / "last").exists()


def test_demo_runs_end_to_end_on_real_weights(tmp_path, capsys):
    table = tmp_path.parent / f"{tmp_path.name}-table.json"
    options = ["--count", "2", "--test-count", "2", "--epochs", "1", "--no-progress", "--json", str(table)]
    assert main(["demo", "--out", str(tmp_path), *options]) == 0
    out = capsys.readouterr().out
    assert "litemedsam (real pretrained weights)" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert json.loads(table.read_text()) == summary  # --json: the table
    rows = summary["rows"]
    assert f"demo finished in {summary['seconds']:.1f} s" in out  # one wall time, console and summary
    assert [r["model"] for r in rows] == [
        "all background",
        "all foreground",
        "zero-shot (no prompt)",
        "zero-shot (box, for reference)",
        "decoder only (no prompt)",
        "LoRA (no prompt)",
        "NAS-PC-LoRA (no prompt)",
        "NAS-PC-LoRA, fused merge (no prompt)",
        "NAS-PC-LoRA, dense merge (no prompt)",
    ]  # prompt-free by default: the paper's setting, where the comparison found the adapters' gain
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert rows[0]["iou"] == 0.0 and rows[1]["iou"] > 0.0  # the trivial baselines are measured, not assumed
    assert rows[3]["iou"] > 0.5  # zero-shot with a box: the untouched model's reference
    assert rows[7]["merge embedding rel. error"] < 1e-5  # fused: exact
    verdicts = [r["vs decoder only"]["verdict"] for r in rows[5:]]
    assert set(verdicts) <= {"tie", "better", "worse"} and len(verdicts) == 4
    assert (
        "prompt-free" in out and "1 epoch x batch 2 = 1 step," in out and "seed 0 (one seed)" in out
    )  # what the table measured
    text = (tmp_path / "summary.md").read_text()
    assert f"Finished in {summary['seconds']:.1f} s" in text
    assert text.count("![](overlays/") == 7 and (tmp_path / "overlays" / "8.png").is_file()
    build_sam("litemedsam", tmp_path / "merged" / "litemedsam_nas_pc_lora_dense.pth")  # plain, strictly


def test_unknown_option_value_is_refused():
    result = _cli("demo", "--out")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_export_and_verify_commands(binary_adapter, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["export", str(binary_adapter), "--out", str(out), "--prompts"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "trtexec equivalent for image_encoder" in printed
    result_file = tmp_path / "verify.json"
    assert (
        main(["verify", str(out), "--against-plain-sam", "--repeats", "3", "--json", str(result_file)]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        "against plain SAM (dense merge): identical operators True, initializers True, MACs True" in printed
    )
    result = json.loads(result_file.read_text())
    assert result["passed"] and result["against_plain_sam"]["plain_sam"]
    # a tolerance no float32 graph can meet: verify must fail, not pass quietly
    assert main(["verify", str(out), "--tolerance", "1e-12"]) == 1


def test_verify_bad_artifact_directory(tmp_path):
    result = _cli("verify", str(tmp_path))
    assert (
        result.returncode == 2
        and "manifest.json not found" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_top_level_help_lists_every_command(capsys):
    from naslora_deploy.cli import cli

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out.split("Commands:")[1]
    names = [line.split()[0] for line in listed.strip().splitlines()]
    expected = ["train", "eval", "inspect", "merge", "export", "verify", "predict", "bench", "demo"]
    assert sorted(names) == sorted(cli.commands) == sorted([*expected, "build-engines"])


def test_no_option_is_declared_twice_and_defaults_live_in_the_dataclasses():
    import click

    from naslora_deploy.cli import cli, export_spec_from, fields_of
    from naslora_deploy.exporters.specs import ExportSpec
    from naslora_deploy.training.config import DemoConfig, TrainConfig

    for name, command in cli.commands.items():
        flags = [flag for param in command.params for flag in param.opts + param.secondary_opts]
        assert len(flags) == len(set(flags)), name
    ctx = click.Context(cli.commands["train"])
    defaults = {p.name: p.get_default(ctx) for p in cli.commands["train"].params}
    built = TrainConfig(**{**fields_of(TrainConfig, defaults), "data": "d", "out": "o"})
    assert built == TrainConfig(data="d", out="o")
    ctx = click.Context(cli.commands["demo"])
    assert (
        DemoConfig(**fields_of(DemoConfig, {p.name: p.get_default(ctx) for p in cli.commands["demo"].params}))
        == DemoConfig()
    )
    ctx = click.Context(cli.commands["export"])
    defaults = {p.name: p.get_default(ctx) for p in cli.commands["export"].params}
    assert export_spec_from(defaults) == ExportSpec()
    trt = export_spec_from({**defaults, "format": "trt", "precision": "bf16", "max_batch": 4})
    assert (trt.engine.precision, trt.engine.max_batch) == ("bf16", 4)


def test_json_means_one_thing_everywhere(trained_run, multiclass_data, tmp_path, capsys):
    assert main(["eval", str(trained_run), "--data", str(multiclass_data), "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["split"] == "test"  # stdout is exactly the JSON
    assert "miou" in captured.err  # the human summary went to stderr
    assert main(["eval", str(trained_run), "--data", str(multiclass_data)]) == 0
    assert "miou" in capsys.readouterr().out
    out = tmp_path / "arch.json"
    assert main(["inspect", str(trained_run), "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"ops", "search_ran", "shares", "trajectory", "weights"}
    assert "block" in capsys.readouterr().out


def test_a_redirected_log_gets_one_line_per_epoch(binary_data, tmp_path):
    result = _cli(*train_args(binary_data, tmp_path / "run", *SEARCH_FROM_EPOCH_2))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr and "\r" not in result.stdout
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == [
        "1/2",
        "2/2",
    ]


def test_an_option_that_needs_an_extra_names_it(trained_run, tmp_path):
    from conftest import run_without

    body = f"""
from naslora_deploy.cli import main
sys.exit(main(["inspect", {str(trained_run)!r}, "--plot", {str(tmp_path / "p.png")!r}]))
"""
    result = run_without(body, blocked=("matplotlib",))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "naslora-deploy inspect: error: --plot needs the matplotlib package: pip install "
        "'naslora-deploy[plot]'"
    )


@pytest.fixture(scope="module")
def litemedsam_run(binary_data, tmp_path_factory):
    """The real pretrained TinyViT SAM (train's default model) trained one step, prompt-free, through the
    CLI; the tests below take it on through eval -> merge -> export -> verify -> predict (a test each,
    each starting lean)."""
    run = tmp_path_factory.mktemp("litemedsam") / "run"
    options = ["--method", "nas_pc_lora", "--epochs", "1", "--batch-size", "1", "--max-steps", "1"]
    assert main(["train", "--data", str(binary_data), "--out", str(run), *options, "--prompt", "none"]) == 0
    release_freed_memory()
    return run


@pytest.fixture(scope="module")
def litemedsam_artifacts(litemedsam_run, tmp_path_factory):
    art = tmp_path_factory.mktemp("litemedsam_art") / "art"
    assert main(["export", str(litemedsam_run), "--out", str(art), "--prompts"]) == 0
    release_freed_memory()
    return art


def test_litemedsam_run_evaluates_and_merges_to_plain_litemedsam(litemedsam_run, binary_data, tmp_path):
    run = litemedsam_run
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["variant"] == "litemedsam" and config["normalization"] == "minmax"  # the default model
    assert config["training"]["pretrained"] is True
    # prompt-free, LiteMedSAM's masks are empty after one step: the run says how to prompt it
    assert json.loads((run / "run_summary.json").read_text())["notes"] == [EMPTY_MASKS_HINT]
    assert config["base_sha256"] == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    assert not (run / "base_model.safetensors").exists()  # the bundled weights are recorded, not copied
    assert main(["eval", str(run), "--data", str(binary_data), "--json", str(tmp_path / "m.json")]) == 0
    assert main(["merge", str(run), "--mode", "dense", "--out", str(tmp_path / "lm.pth")]) == 0
    build_sam("litemedsam", tmp_path / "lm.pth")  # a plain LiteMedSAM checkpoint, strictly
    assert main(["inspect", str(run), "--json", str(tmp_path / "arch.json")]) == 0
    assert len(json.loads((tmp_path / "arch.json").read_text())["weights"]) == 30  # 10 blocks x q, k, v


def test_litemedsam_artifacts_verify_as_plain_litemedsam(litemedsam_artifacts, capsys):
    assert json.loads((litemedsam_artifacts / "manifest.json").read_text())["normalization"] == "minmax"
    capsys.readouterr()
    assert (
        main(["verify", str(litemedsam_artifacts), "--against-plain-sam", "--repeats", "2", "--count", "1"])
        == 0
    )
    assert "identical operators True, initializers True, MACs True" in capsys.readouterr().out


def test_litemedsam_artifacts_predict(litemedsam_artifacts, binary_data, tmp_path):
    image = sorted((binary_data / "test" / "images").iterdir())[0]
    out = tmp_path / "pred"
    assert (
        main(["predict", str(litemedsam_artifacts), str(image), "--out", str(out), "--box", "20,20,150,140"])
        == 0
    )
    record = json.loads((out / "results.jsonl").read_text())
    assert record["score"] is not None and record["area"] > 0


def test_litemedsam_fp16_export_verifies(litemedsam_run, tmp_path):
    half = tmp_path / "art16"
    assert main(["export", str(litemedsam_run), "--out", str(half), "--precision", "fp16"]) == 0
    assert main(["verify", str(half), "--count", "1", "--json", str(tmp_path / "v16.json")]) == 0
    rows = json.loads((tmp_path / "v16.json").read_text())["parity"]
    end_to_end = next(r for r in rows if r["output"] == "mask_logits (end to end)")
    assert end_to_end["mask_iou"] > 0.95 and end_to_end["rel"] < 0.05  # fp16 LiteMedSAM against fp32 PyTorch


def test_box_prompted_training_and_evaluation(binary_data, tmp_path):
    run = tmp_path / "run"
    options = [*SEARCH_FROM_EPOCH_2, "--prompt", "box", "--lr", "1e-3", "--no-progress"]
    assert main(train_args(binary_data, run, *options)) == 0
    assert json.loads((run / "last" / "adapter_config.json").read_text())["prompt"] == "box"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["weights", "weights+alpha"] and all(
        "iou" in r["val"] for r in records
    )
    results = {}
    for prompt in (None, "none", "box"):
        out = tmp_path / f"{prompt}.json"
        assert (
            main(
                ["eval", str(run), "--data", str(binary_data), "--json", str(out)]
                + (["--prompt", prompt] if prompt else [])
            )
            == 0
        )
        results[prompt] = json.loads(out.read_text())
    assert results[None]["prompt"] == "box" and results[None]["metrics"] == results["box"]["metrics"]
    assert results["none"]["metrics"]["iou"] != results["box"]["metrics"]["iou"]  # two protocols, two figures


def test_eval_names_its_saliency_protocol(binary_adapter, binary_data, tmp_path):
    figures = {}
    for protocol in ("normalized", "raw"):
        out = tmp_path / f"{protocol}.json"
        args = ["eval", str(binary_adapter), "--data", str(binary_data), "--json", str(out)]
        assert main(args + ["--saliency-protocol", protocol, "--device", "cpu"]) == 0
        metrics = json.loads(out.read_text())["metrics"]
        assert metrics["saliency_protocol"] == protocol
        figures[protocol] = metrics
    assert figures["raw"]["iou"] == figures["normalized"]["iou"]  # thresholded figures do not change
    assert figures["raw"]["mae"] != figures["normalized"]["mae"]  # the stretched ones do
