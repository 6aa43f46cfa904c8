"""What the BatchNorm re-check of the FissionFusion chapter compares: averages, single models, different choices."""

from __future__ import annotations

import pandas as pd

from medsoup.chapters.fissionfusion_soups import bn_recheck_kinds


def test_bn_recheck_kinds_tells_single_models_and_different_choices_apart():
    rows = pd.DataFrame([
        {"dataset": "d", "seed": 0, "method": "Greedy soup", "recalibrate": True, "ingredients": 1, "kept": "a (1)"},
        {"dataset": "d", "seed": 0, "method": "Greedy soup", "recalibrate": False, "ingredients": 1, "kept": "b (1)"},
        {"dataset": "d", "seed": 0, "method": "GoG", "recalibrate": True, "ingredients": 2, "kept": "a (0.5); b (0.5)"},
        {"dataset": "d", "seed": 0, "method": "GoG", "recalibrate": False, "ingredients": 2, "kept": "a (0.5); b (0.5)"},
        {"dataset": "d", "seed": 0, "method": "GS(best)", "recalibrate": True, "ingredients": 1, "kept": "a (1)"},
    ])
    # GS(best) has no averaged row here, so it is no pair; the greedy soups are two different single models
    assert bn_recheck_kinds(rows, ["Greedy soup", "GoG", "GS(best)"]) == {"pairs": 2, "single": 1, "different": 1}
