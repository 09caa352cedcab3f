"""Presets (Bartunov et al. 2018 Table 5, Xiao et al. 2018, quickstart) and command-line overrides."""
import pytest

from bioplaus_kernels.train.cli import build_parser, hyper_for
from bioplaus_kernels.train.errors import UsageError
from bioplaus_kernels.train.presets import PRESETS, RULES, SCHEDULES, resolve


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves_or_names_the_empty_cell(preset):
    for rule in RULES:
        for schedule in SCHEDULES:
            try:
                h = resolve(preset, rule, schedule)
            except UsageError as e:
                assert preset == "bartunov2018:imagenet-lc" and "sdtp" in rule and schedule == "alternating", e
                continue
            assert h.lr > 0 and h.batch_size > 0 and h.epochs > 0 and h.optimizer in ("adam", "sgd", "bm")


def test_table5_columns():
    h = resolve("bartunov2018:mnist-fc", "dtp", "parallel")
    assert (h.lr, h.beta1, h.beta2, h.eps) == (7.57e-4, 0.99, 0.95, 1e-3)
    assert (h.inverse.lr, h.inverse.beta2, h.alpha, h.sigma) == (7.68e-4, 0.999, 0.150, 0.361)
    h = resolve("bartunov2018:mnist-fc", "sdtp", "alternating")
    assert (h.lr, h.inverse.lr, h.sigma) == (3.01e-4, 9.572e-3, 0.118)
    assert resolve("bartunov2018:cifar10-lc", "dfa", "parallel") == resolve("bartunov2018:cifar10-lc", "fa",
                                                                          "parallel")
    assert resolve("bartunov2018:mnist-lc", "ao-sdtp", "parallel") == resolve("bartunov2018:mnist-lc", "sdtp",
                                                                           "parallel")
    assert resolve("xiao2018:imagenet", "usf", "parallel").optimizer == "sgd"


def test_command_line_overrides_the_preset():
    args = build_parser().parse_args(["train", "--lr", "0.01", "--inverse-eps", "1e-5", "--sigma", "0.05",
                                      "--epochs", "7"])
    h = hyper_for(args, "dtp", "alternating", "bartunov2018:mnist-fc")
    base = resolve("bartunov2018:mnist-fc", "dtp", "alternating")
    assert (h.lr, h.sigma, h.epochs, h.inverse.eps) == (0.01, 0.05, 7, 1e-5)
    assert (h.beta1, h.alpha, h.inverse.lr, h.batch_size) == (base.beta1, base.alpha, base.inverse.lr,
                                                              base.batch_size)
