"""bench/run.py: the report format scripts read (no timing here: the figures themselves are not tested)."""

import pytest

from bench import run as bench


def test_report_has_a_table_and_one_ratio_line_per_benchmark(monkeypatch, capsys):
    for number, name in enumerate(bench.BENCHMARKS):
        result = bench.Result(name, 1.0 + number / 10, ">= 0.9" if number % 2 else "<= 1.25", "a vs b",
                              "Unet/resnet18 patch 64 batch 2 threads 1")
        monkeypatch.setattr(bench, name, lambda work, rounds, workers, result=result: result)
    assert bench.main(bench.parse_args([])) == 0
    out = capsys.readouterr().out
    ratio_lines = [line.split() for line in out.splitlines() if line.startswith("ratio ")]
    assert ratio_lines == [["ratio", name, f"{1.0 + number / 10:.3f}"] for number, name in enumerate(bench.BENCHMARKS)]
    assert "setting" in out and "Unet/resnet18 patch 64 batch 2 threads 1" in out


@pytest.mark.parametrize("target, value, met", [(">= 0.95", 0.96, True), (">= 0.95", 0.94, False),
                                                ("<= 1.25", 1.1, True), ("<= 2.1", 2.2, False)])
def test_target_direction(target, value, met):
    assert bench.Result("x", value, target, "", "").met is met
