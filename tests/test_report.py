"""The HTML report: one self-contained page of every metrics file and figure folder."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grokpipe.report import build  # noqa: E402


def test_report_embeds_figures_and_skips_a_killed_stages_partial_folder(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "toy_model.json").write_text(json.dumps({"checks": {"a": True}}))
    for folder in ("toy_model", "extra", "ops.partial"):
        (tmp_path / "figures" / folder).mkdir(parents=True)
        fig, ax = plt.subplots(figsize=(1, 1))
        fig.savefig(tmp_path / "figures" / folder / "f.png")
        plt.close(fig)
    page = build(tmp_path)
    assert page.count("data:image/png;base64,") == 2  # toy_model and extra, not ops.partial
    assert "ops.partial" not in page
    assert 'id="extra"' in page and 'id="toy_model"' in page
    assert "http://" not in page and "https://" not in page  # opens offline


def test_an_experiments_table_and_every_field_beside_it(tmp_path):
    stat = {"mean": 1200.0, "std": 100.0, "min": 1100.0, "max": 1300.0, "n": 2}
    condition = {f: stat for f in ("memorized_at", "grokked_at", "delay", "post_grok_drops")}
    condition |= {"final_train_acc": 1.0, "final_val_acc": 0.99, "end_val_acc": 0.995}
    condition |= {"seeds": 2, "grokked_seeds": 2, "final_val_loss": 0.0421}
    metrics = {
        "title": "every op",
        "preset": "full",
        "summary": {"grokked_runs": 2, "runs": 2, "median_grokked_at": 1200.0},
        "timing": {"model_steps": 2000, "train_seconds": 3.0},
        "conditions": {"op=x+y": condition},
        "analyses": {"transfer": {"verdict": "fine-tuning helps", "runs": {"r1": 0.51}}},
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "figures").mkdir()
    (tmp_path / "metrics" / "ops.json").write_text(json.dumps(metrics))
    page = build(tmp_path)
    assert "<td>op=x+y</td><td>2/2</td><td>1,200 ± 100</td>" in page
    assert "transfer</b>: fine-tuning helps" in page
    folded = page[page.index("<details>") :]
    assert "final_val_loss" in folded and "0.0421" in folded and "0.51" in folded
