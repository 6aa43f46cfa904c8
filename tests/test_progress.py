"""Progress bars: drawn, with the point being evaluated, where someone watches; silent in CI logs."""

from __future__ import annotations

import io
import sys

import torch

from medsoup.core import progress as bars
from medsoup.core.models import create_model
from medsoup.merging.landscape import lmc_curve
from tests.conftest import tiny


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _lmc(points=3):
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(create_model("smallcnn", 2, in_chans=1).state_dict())
    return lmc_curve(create_model("smallcnn", 2, in_chans=1), *states, tiny("breastmnist"), points=points)


def test_nothing_is_printed_without_a_terminal(capsys):
    assert not bars.watched()
    _lmc()
    assert capsys.readouterr() == ("", "")


def test_a_terminal_sees_the_bar_with_its_point_and_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert bars.watched()
    _lmc()
    shown = terminal.getvalue()
    assert "LMC curve" in shown and "3/3" in shown and "c = +1.00, +0.00" in shown and "<" in shown  # elapsed<left
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert bars.progress(range(2), enabled=False).disable
