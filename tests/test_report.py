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
