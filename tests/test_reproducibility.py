"""The reproducibility page's tables: pins, profile tables, recorded wall times."""

from __future__ import annotations

import pandas as pd

from medsoup.book.execute import record_timing
from medsoup.chapters import reproducibility as rep
from medsoup.runs.provenance import PACKAGES, package_versions
from medsoup.runs.profiles import PROFILES


def test_pinned_versions_reads_both_equality_forms(tmp_path):
    path = tmp_path / "constraints.txt"
    path.write_text("# header\ntorch===2.13.0\nscikit_learn==1.9.1\nPySocks==1.7.1  # comment\nfoo>=1\n")
    assert rep.pinned_versions(path) == {"torch": "2.13.0", "scikit-learn": "1.9.1", "pysocks": "1.7.1"}


def test_versions_table_lists_python_the_libraries_and_the_toolchain(tmp_path):
    path = tmp_path / "constraints.txt"
    path.write_text("torch==2.13.0\n")
    table = rep.versions_table(path)
    assert list(table.index) == ["python", *PACKAGES, *rep.TOOLCHAIN]
    assert table.loc["torch", "pinned in constraints.txt"] == "2.13.0"
    assert table.loc["python", "pinned in constraints.txt"] == "(interpreter)"
    assert table.loc["timm", "pinned in constraints.txt"] == "-"


def test_package_versions_of_named_distributions():
    versions = package_versions(("torch", "no-such-distribution-medsoup"))
    assert list(versions) == ["python", "torch", "no-such-distribution-medsoup"]
    assert versions["no-such-distribution-medsoup"] == "not installed" and versions["torch"][0].isdigit()


def test_profile_tables_have_one_column_per_profile():
    for name in rep.PROFILE_TABLES:
        table = rep.profile_table(name)
        assert list(table.columns) == list(PROFILES) and len(table) > 3


def test_settings_table_has_one_short_row_per_setting():
    table = rep.settings_table({"datasets": ("breastmnist", "retinamnist"), "epochs": 2,
                                "sources": {"breastmnist": ("a", "b")}, "lrs": tuple(range(40))})
    assert list(table.index) == ["datasets", "epochs", "sources", "lrs"]
    assert list(table["value"][:3]) == ["breastmnist, retinamnist", "2", "breastmnist: a, b"]
    assert len(table.loc["lrs", "value"]) == 60 and table.loc["lrs", "value"].endswith("...")


def test_timings_come_from_what_the_book_runner_recorded(tmp_path):
    assert rep.timings("cpu", tmp_path / "results").empty and rep.reference_machine("cpu", tmp_path / "results") is None
    record_timing(tmp_path, "cpu", "00_quickstart", 90.0)
    record_timing(tmp_path, "cpu", "20_fissionfusion", 30.0)
    times = rep.timings("cpu", tmp_path / "results")
    assert times["notebook"].tolist() == ["00_quickstart", "20_fissionfusion"]
    assert times["minutes"].tolist() == [1.5, 0.5] and times["side by side"].tolist() == [1, 1]
    assert rep.wall_minutes(times) == 2.0  # recorded without an execute call: each entry's own minutes
    legacy = times.assign(started=None)  # a record written before starts were kept: the sum
    assert rep.wall_minutes(legacy) == 2.0 and rep.wall_minutes(times.iloc[:0]) == 0.0
    assert rep.reference_machine("cpu", tmp_path / "results")["cpu_count"] >= 1


def test_wall_minutes_spans_each_execute_call_and_adds_later_executions_alone():
    def entry(notebook, started, finished, execution, minutes):
        return {"notebook": notebook, "started": f"2026-12-06T{started}:00+0000",
                "finished": f"2026-12-06T{finished}:00+0000", "execution": execution, "minutes": minutes}
    run = [entry("10", "10:00", "10:40", "a", 40), entry("20", "10:00", "11:00", "a", 60),
           entry("40", "11:00", "11:05", "a", 5)]
    assert rep.wall_minutes(pd.DataFrame(run)) == 65.0  # side by side: the span, not the 105 minutes summed
    later = run[:2] + [entry("40", "15:00", "15:02", "b", 2)]  # 40 re-executed alone hours later
    assert rep.wall_minutes(pd.DataFrame(later)) == 60.0 + 2.0
    untagged = run[:2] + [entry("90", "09:00", "09:01", None, 1)]
    assert rep.wall_minutes(pd.DataFrame(untagged)) == 60.0 + 1.0
