"""The output ensembles of a FissionFusion zoo: the mean of its models' softmax, the comparison model
soups are measured against (Wortsman et al. 2022).

:func:`ensembles` averages the per-image test predictions the zoo's runs stored
(:meth:`~medsoup.runs.store.RunResult.load_predictions`): no evaluation is rerun, and each member keeps
the BatchNorm statistics it was trained with (an ensemble merges no weights, so there is nothing to
recompute); its rows sit beside the soups' of either BatchNorm analysis with the same numbers.
"""

from __future__ import annotations

import torch

from medsoup.chapters.fissionfusion import Zoo
from medsoup.chapters.fissionfusion_soups import MethodResult
from medsoup.core.metrics import probability_metrics

#: The output ensembles of :func:`ensembles`: the mean of the softmax of the grid search's models, and of
#: FGG's base models and snapshots.
ENSEMBLES = ("GS ensemble", "FGG ensemble")


def output_ensemble(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """The output ensemble: the mean of the members' predicted probabilities (softmax; sigmoid scores for
    multi-label), p(y | x) = 1/M sum_m p_m(y | x) (Lakshminarayanan et al. 2017, Sec. 2.4; the ensemble
    model soups are measured against, Wortsman et al. 2022, Sec. 3)."""
    if not probabilities:
        raise ValueError("an output ensemble needs at least one member's probabilities")
    shapes = {tuple(p.shape) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"the members' probabilities differ in shape: {sorted(shapes)}")
    return torch.stack([p.float() for p in probabilities]).mean(0)


def ensemble_members(zoo: Zoo) -> dict[str, list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]]:
    """Per name of :data:`ENSEMBLES`: its members' names (:meth:`Zoo.grid_labels`, :meth:`Zoo.fgg_labels`)
    and stored test predictions: the grid search's runs; FGG's base models and their snapshots."""
    fgg = [member for b, f in zip(zoo.base, zoo.fission) for member in [(b, "model")] + [(f, a) for a in f.artifacts]]
    fgg_labels = [label for group in zoo.fgg_labels() for label in group]
    return {"GS ensemble": [(label, r.load_predictions()) for label, r in zip(zoo.grid_labels(), zoo.grid)],
            "FGG ensemble": [(label, run.load_predictions(name)) for label, (run, name) in zip(fgg_labels, fgg)]}


def ensembles(zoo: Zoo, task: str) -> dict[str, MethodResult]:
    """The zoo's output ensembles (:data:`ENSEMBLES`, :func:`output_ensemble`) with their test metrics and
    calibration, from the runs' stored test predictions (no evaluation; ``evaluations`` 0, no validation
    metrics); ``weights``: each member, 1 / (members)."""
    out = {}
    for name, members in ensemble_members(zoo).items():
        targets = members[0][1][1]
        if not all(torch.equal(t, targets) for _, (_, t) in members):
            raise ValueError(f"the members of {name} were tested on different test sets (their targets differ)")
        probs = output_ensemble([p for _, (p, _) in members])
        out[name] = MethodResult({}, {}, probability_metrics(task, targets, probs), 0, len(members),
                                 weights={label: 1 / len(members) for label, _ in members},
                                 predictions=(probs, targets))
    return out
