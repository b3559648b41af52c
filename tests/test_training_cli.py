"""The example scripts' command lines (`transformers_valor.training.cli`): fine-tune, evaluate, write results."""

import json
import runpy
import sys

import pytest
from huggingface_hub import ModelCard

from training_helpers import REPO, reset_accelerate


def run_example(monkeypatch, script: str, *argv: str) -> None:
    """`python examples/<script> argv...` in this process."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(REPO / "examples" / script), run_name="__main__")


def test_scripts_train_evaluate_and_write_results(retrieval_run, tmp_path, monkeypatch, capsys):
    # `retrieval_run` is `examples/finetune_retrieval.py --config retrieval.yaml` (the YAML says `task: pretrain`).
    output_dir, config = retrieval_run
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert set(results["test"]) == {"tva", "tv", "ta"} and "va2t_R@10" in results["test"]["tva"]
    keys = {f"{d}_{m}" for d in ("t2va", "va2t") for m in ("R@1", "R@5", "R@10", "median_rank", "mean_rank")}
    assert keys == set(results["test"]["tva"])
    assert set(results["test_audio"]) == {"ta"} and "a2t_mean_rank" in results["test_audio"]["ta"]
    assert json.loads((output_dir / "final" / "config.json").read_text())["architectures"] == [
        "ValorForRetrieval"
    ]
    card = ModelCard.load(output_dir / "final" / "README.md").data  # the run's datasets and results only
    assert card.datasets == ["tiny"] and card.license == "apache-2.0"
    stated = {(r.dataset_name, r.metric_type): r.metric_value for r in card.eval_results}
    assert stated[("test", "tva/t2va_R@1")] == results["test"]["tva"]["t2va_R@1"]
    assert len(stated) == sum(len(metrics) for groups in results.values() for metrics in groups.values())
    reset_accelerate()
    run_example(
        monkeypatch,
        "evaluate_finetuned.py",
        "--config",
        str(config),
        "--task",
        "retrieval",
        "--output_dir",
        str(tmp_path / "again"),
    )
    assert json.loads((tmp_path / "again" / "eval_results.json").read_text()) == results
    assert json.loads(capsys.readouterr().out) == results


@pytest.mark.parametrize(
    "script", ["pretrain.py", "finetune_retrieval.py", "finetune_captioning.py", "finetune_qa.py"]
)
def test_training_scripts_share_one_command_line(script, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_example(monkeypatch, script, "--help")
    usage = capsys.readouterr().out
    for option in (
        "--config",
        "--set",
        "--resume_from_checkpoint",
        "--stop_after_steps",
        "--overwrite_output_dir",
    ):
        assert option in usage
    assert ("--skip_eval" in usage) == (script != "pretrain.py")
