"""bioplaus_kernels.tp.Trainer: target rules against a float64 pure-PyTorch reference of the same equations,
properties (exact inverses, small-alpha DTP targets), training on scikit-learn's digits for every algorithm and
schedule, checkpoints, distributed averaging, bad configurations."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioplaus_kernels.nn import LocallyConnected2d
from bioplaus_kernels.reference import difference_target as ref
from bioplaus_kernels.reference import inverse_loss as ref_loss
from bioplaus_kernels.tp import LinearInverse, LocallyConnected2dInverse, Trainer

ACT_NAMES = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are tiny: a second intra-op thread brings nothing, and on a loaded machine every OpenMP
    region then waits for a descheduled thread (measured: 25x slower steps with 2 threads on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fc_net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 16), nn.Sigmoid(),
                         nn.Linear(16, 10)).to(dtype)


def lc_net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(LocallyConnected2d(1, 3, 8, 3, stride=2, padding="same"), nn.Tanh(),
                         LocallyConnected2d(3, 4, 4, 3, stride=1, padding="same"), nn.Tanh(), nn.Flatten(),
                         nn.Linear(64, 10)).to(dtype)


def batch(n=12, image=False, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 64, generator=g, dtype=dtype)
    return (x.view(n, 1, 8, 8) if image else x), torch.randint(0, 10, (n,), generator=g)


def reference_targets(trainer, model, x, y):
    """The paper's target rules written out in float64 from the model's layers and the trainer's inverse
    parameters: reference inverses, autograd for DTP's gradient step."""
    layers = [m for m in model if isinstance(m, (nn.Linear, LocallyConnected2d))]
    acts, hs, h = {}, [x], x
    for m in model:
        h = m(h)
        if isinstance(m, (nn.Linear, LocallyConnected2d)):
            hs.append(h)
        elif type(m) in ACT_NAMES:
            acts[len(hs) - 1] = ACT_NAMES[type(m)]
            hs[-1] = h
    L = len(layers)
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    h_in, logits = flat(hs[L - 1]).detach(), hs[L].detach()
    onehot = F.one_hot(y, 10).double()
    if trainer.algorithm == "dtp":
        v = h_in.clone().requires_grad_()
        grad, = torch.autograd.grad(F.cross_entropy(layers[-1](v), y, reduction="sum"), v)
        t_in = h_in - trainer.alpha * grad
    else:
        inv = trainer.inverses[str(L)]
        p = logits.softmax(-1)
        code, t_code = (p, onehot) if trainer.output_inverse == "probabilities" else (logits, logits + onehot - p)
        if trainer.algorithm == "ao-sdtp":
            z = h_in @ trainer.aux.t()
            code, t_code = torch.cat([code, z], 1), torch.cat([t_code, z], 1)
        t_in = ref.difference_target(h_in, t_code, code, inv.weight, inv.bias, acts.get(L - 1, "identity"))
    targets = {L - 1: t_in.view_as(hs[L - 1])}
    for l in range(L - 1, 1, -1):
        inv, layer, act = trainer.inverses[str(l)], layers[l - 1], acts.get(l - 1, "identity")
        if isinstance(layer, LocallyConnected2d):
            t = ref.difference_target_lc2d(hs[l - 1], targets[l], hs[l], inv.weight, inv.bias, layer.stride,
                                           layer.padding4, layer.dilation, act)
        else:
            t = ref.difference_target(flat(hs[l - 1]), targets[l], hs[l], inv.weight, inv.bias, act)
        targets[l - 1] = t.view_as(hs[l - 1]).detach()
    return targets


def perturb_inverses(trainer):
    with torch.no_grad():
        for p in trainer.inverses.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("net", ["fc", "lc"])
@pytest.mark.parametrize("algorithm,output_inverse", [("dtp", "probabilities"), ("sdtp", "probabilities"),
                                                      ("sdtp", "logits"), ("ao-sdtp", "probabilities"),
                                                      ("ao-sdtp", "logits")])
def test_targets_match_reference(algorithm, output_inverse, net):
    model = fc_net() if net == "fc" else lc_net()
    trainer = Trainer(model, algorithm, alpha=0.15, aux_width=7, output_inverse=output_inverse, seed=3)
    perturb_inverses(trainer)  # nonzero biases too
    x, y = batch(image=net == "lc")
    got, hs = trainer.targets(x, y)
    want = reference_targets(trainer, model, x, y)
    assert sorted(got) == sorted(want) == list(range(1, len(trainer.blocks)))
    for l in want:
        assert got[l].shape == hs[l].shape
        torch.testing.assert_close(got[l], want[l], atol=1e-12, rtol=1e-12)


def test_inverse_types_and_activations():
    trainer = Trainer(lc_net(), "sdtp")
    assert isinstance(trainer.inverses["2"], LocallyConnected2dInverse)
    assert isinstance(trainer.inverses["3"], LinearInverse)
    assert trainer.inverses["2"].bias.shape == (3, 4, 4)  # bias over the input grid of LC layer 2
    fc = Trainer(fc_net(), "dtp")
    assert sorted(fc.inverses) == ["2", "3"]  # DTP: no output inverse
    assert [fc.inverses[k].activation for k in ("2", "3")] == ["tanh", "tanh"]
    sd = Trainer(fc_net(), "ao-sdtp", aux_width=5)
    assert sd.inverses["4"].activation == "sigmoid" and sd.inverses["4"].weight.shape == (16, 15)


@pytest.mark.parametrize("algorithm", ["dtp", "sdtp"])
def test_inverse_error_matches_reference(algorithm):
    """step()'s inverse_error/<l> is the paper's inverse loss (noise-preserving for DTP, de-noising for SDTP)
    with the kernel's noise (seed, stream l, step counter)."""
    model = fc_net()
    trainer = Trainer(model, algorithm, schedule="parallel", sigma=0.2, seed=5, output_inverse="probabilities")
    x, y = batch()
    blocks = [model[0:2], model[2:4], model[4:6], model[6:7]]
    hs = [x]
    for b in blocks:
        hs.append(b(hs[-1]).detach())
    want = {}
    for key, inv in trainer.inverses.items():
        l = int(key)
        h_noisy = ref_loss.inverse_loss_noisy_input(hs[l - 1], 0.2, 5, l, 0)
        code = blocks[l - 1](h_noisy)
        if l == 4:
            code = code.softmax(-1)
        target = h_noisy if algorithm == "dtp" else hs[l - 1]
        want[l] = ref_loss.inverse_loss(code, target, inv.weight, inv.bias, inv.activation)[0].item()
    stats = trainer.step(x, y)
    for l, v in want.items():
        assert math.isclose(stats[f"inverse_error/{l}"], v, rel_tol=1e-5)


def test_exact_inverses_propagate_exact_targets():
    """With exact inverses (linear layers, V = W^-1, c = -W^-1 b), every difference target maps onto the target
    above: f_l(t_{l-1}) = t_l; and small-alpha DTP targets, pushed forward, lower the loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)).double()
    trainer = Trainer(model, "dtp", alpha=0.01)
    with torch.no_grad():
        for l in (2, 3):
            W, b = model[l - 1].weight, model[l - 1].bias
            trainer.inverses[str(l)].weight.copy_(torch.linalg.inv(W))
            trainer.inverses[str(l)].bias.copy_(-torch.linalg.inv(W) @ b)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    targets, hs = trainer.targets(x, y)
    for l in (2, 3):
        torch.testing.assert_close(model[l - 1](targets[l - 1]), targets[l], atol=1e-10, rtol=1e-10)
    with torch.no_grad():
        pushed = model[1:](targets[1])
        assert F.cross_entropy(pushed, y) < F.cross_entropy(hs[-1], y)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_small_alpha_dtp_target_lowers_loss(alpha):
    model = fc_net()
    trainer = Trainer(model, "dtp", alpha=alpha)
    x, y = batch(n=32)
    targets, hs = trainer.targets(x, y)
    with torch.no_grad():
        before = F.cross_entropy(hs[-1], y, reduction="none")
        after = F.cross_entropy(model[6](targets[3]), y, reduction="none")
    assert bool((after < before).all())


def test_target_equal_to_activation_stays():
    """A layer whose target above equals its activation gets its activation as target (any inverse)."""
    trainer = Trainer(fc_net(), "dtp")
    perturb_inverses(trainer)
    x, _ = batch()
    hs = [x]
    for b in trainer.blocks:
        hs.append(b(hs[-1]).detach())
    for l in (2, 3):
        torch.testing.assert_close(trainer.inverses[str(l)].difference_target(hs[l - 1], hs[l], hs[l]), hs[l - 1],
                                   atol=1e-14, rtol=0)


# --- training on real data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)


def train(trainer, x, y, steps, phase_steps=25, batch_size=64):
    g = torch.Generator().manual_seed(0)
    for s in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        stats = trainer.step(x[idx], y[idx])
        assert all(math.isfinite(v) for v in stats.values())
        if (s + 1) % phase_steps == 0:
            trainer.end_epoch()


def loss_ratio(model, trainer, x, y, steps):
    """Full-data cross-entropy after ``steps`` steps over the one before."""
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    train(trainer, x, y, steps)
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item() / before


@pytest.mark.parametrize("schedule", ["parallel", "alternating"])
@pytest.mark.parametrize("algorithm", ["dtp", "sdtp", "ao-sdtp"])
def test_lowers_training_loss_on_digits(algorithm, schedule, digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 10))
    trainer = Trainer(model, algorithm, schedule=schedule, alpha=0.2, sigma=0.1, aux_width=32,
                      forward_optimizer=lambda p: torch.optim.Adam(p, lr=2e-3))
    assert loss_ratio(model, trainer, *digits, 200) < 0.6


@pytest.mark.parametrize("algorithm", ["dtp", "sdtp"])
def test_lc_net_lowers_training_loss_on_digits(algorithm, digits):
    model = lc_net(torch.float32)
    trainer = Trainer(model, algorithm, schedule="parallel", alpha=0.2,
                      forward_optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    assert loss_ratio(model, trainer, digits[0].view(-1, 1, 8, 8), digits[1], 150) < 0.6


# --- schedule, state, distributed ---------------------------------------------------------------------
def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_alternating_phases_update_one_kind():
    model = fc_net(torch.float32)
    trainer = Trainer(model, "sdtp", schedule="alternating")
    x, y = batch(dtype=torch.float32)
    assert trainer.phase == "inverse"
    m0, i0 = params(model), params(trainer.inverses)
    stats = trainer.step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(m0, params(model)))
    assert not all(torch.equal(a, b) for a, b in zip(i0, params(trainer.inverses)))
    assert "inverse_error/2" in stats and "target_distance/1" not in stats
    trainer.end_epoch()
    assert trainer.phase == "forward"
    m0, i0 = params(model), params(trainer.inverses)
    stats = trainer.step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(i0, params(trainer.inverses)))
    assert not all(torch.equal(a, b) for a, b in zip(m0, params(model)))
    assert "target_distance/1" in stats and "inverse_error/2" not in stats
    trainer.end_epoch()
    assert trainer.phase == "inverse"


def test_parallel_reports_everything():
    trainer = Trainer(fc_net(torch.float32), "ao-sdtp", schedule="parallel", aux_width=8)
    stats = trainer.step(*batch(dtype=torch.float32))
    assert {"loss", "accuracy", "inverse_error/2", "inverse_error/3", "inverse_error/4", "target_distance/1",
            "target_distance/2", "target_distance/3"} <= set(stats)
    trainer.end_epoch()
    assert trainer.phase == "both"


@pytest.mark.parametrize("algorithm", ["dtp", "sdtp"])
def test_parallel_targets_use_the_inverses_before_their_update(algorithm):
    """Algorithm 1's order: a parallel step's forward update uses the targets of the inverses as they were
    before that step's inverse update (the reported target distances are those of trainer.targets())."""
    x, y = batch()
    trainer = Trainer(fc_net(), algorithm, schedule="parallel")
    targets, hs = trainer.targets(x, y)
    stats = trainer.step(x, y)
    for l, t in targets.items():
        want = (t - hs[l]).pow(2).sum().item() / x.shape[0]
        assert stats[f"target_distance/{l}"] == pytest.approx(want, rel=1e-6)  # stats come back as float32


def test_state_dict_round_trip():
    x, y = batch(dtype=torch.float32)
    a_model = fc_net(torch.float32)
    a = Trainer(a_model, "dtp", schedule="alternating", seed=4)
    a.step(x, y)
    a.end_epoch()
    a.step(x, y)
    buf = io.BytesIO()
    torch.save({"model": a_model.state_dict(), "trainer": a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b_model = fc_net(torch.float32, seed=9)
    b_model.load_state_dict(saved["model"])
    b = Trainer(b_model, "dtp", schedule="alternating", seed=4)
    b.load_state_dict(saved["trainer"])
    assert b.phase == a.phase and b.step_count == a.step_count == 2
    assert a.step(x, y) == b.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(params(a_model), params(b_model)))
    with pytest.raises(ValueError, match="saved with algorithm='dtp' but this trainer uses 'sdtp'"):
        Trainer(fc_net(torch.float32), "sdtp").load_state_dict(saved["trainer"])


def test_distributed_single_rank_matches(tmp_path):
    """With torch.distributed initialised (gloo, world size 1), gradients go through all_reduce and the step
    equals the undistributed one."""
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    x, y = batch(dtype=torch.float32)
    ref_model = fc_net(torch.float32)
    ref_stats = Trainer(ref_model, "sdtp", schedule="parallel").step(x, y)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = fc_net(torch.float32)
        stats = Trainer(model, "sdtp", schedule="parallel").step(x, y)
    finally:
        dist.destroy_process_group()
    assert stats == ref_stats
    assert all(torch.equal(p, q) for p, q in zip(params(ref_model), params(model)))


# --- bad configurations --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,msg", [
    (dict(algorithm="tp"), ValueError, "algorithm must be one of 'dtp', 'sdtp', 'ao-sdtp', got 'tp'"),
    (dict(schedule="sequential"), ValueError, "schedule must be one of 'parallel', 'alternating', got 'sequential'"),
    (dict(output_inverse="softmax"), ValueError, "output_inverse must be one of 'probabilities', 'logits'"),
    (dict(alpha=0.0), ValueError, "alpha must be a finite number > 0, got 0.0"),
    (dict(sigma=-1.0), ValueError, "sigma must be a finite number >= 0"),
    (dict(algorithm="ao-sdtp", aux_width=0), ValueError, "aux_width must be a positive int for 'ao-sdtp', got 0"),
])
def test_bad_arguments(kwargs, error, msg):
    args = dict(algorithm="dtp", **{k: v for k, v in kwargs.items() if k != "algorithm"})
    args["algorithm"] = kwargs.get("algorithm", "dtp")
    with pytest.raises(error, match=msg):
        Trainer(fc_net(), **args)


@pytest.mark.parametrize("model,msg", [
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Conv2d(1, 1, 3), nn.Linear(4, 2)),
     r"child 2 \(Conv2d\) has no inverse"),
    (nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.Linear(4, 2)), r"child 1 \(Dropout\) has no inverse"),
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(-1)), r"child 3 \(Softmax\) has no inverse"),
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()), "last child of the model must be the output"),
    (nn.Sequential(nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 2)), "must directly follow a Linear"),
    (nn.Sequential(nn.Linear(4, 2)), "needs at least 2 parametrised layers, got 1"),
    (nn.Linear(4, 2), "model must be a torch.nn.Sequential, got Linear"),
])
def test_bad_models(model, msg):
    with pytest.raises((TypeError, ValueError), match=msg):
        Trainer(model, "sdtp")
