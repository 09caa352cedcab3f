"""BatchManhattan: SGD on sign(gradient), against torch.optim.SGD fed the signs."""
import pytest
import torch

from bioplaus_kernels.optim import BatchManhattan


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=1e-2),
                                dict(momentum=0.8, nesterov=True, weight_decay=1e-3),
                                dict(momentum=0.5, dampening=0.3)])
def test_equals_sgd_on_the_sign_of_the_gradient(kw):
    torch.manual_seed(0)
    a = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    opt_bm, opt_sgd = BatchManhattan([a], lr=0.05, **kw), torch.optim.SGD([b], lr=0.05, **kw)
    for step in range(4):
        g = torch.randn(7, 5, dtype=torch.float64) * 10 ** step
        g[0, 0] = 0.0  # sign(0) = 0
        a.grad = g.clone()
        b.grad = torch.sign(g)
        opt_bm.step()
        opt_sgd.step()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_step_size_ignores_gradient_magnitude():
    p = torch.zeros(3, requires_grad=True)
    opt = BatchManhattan([p], lr=0.1)
    p.grad = torch.tensor([1e-6, -1e6, 0.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-0.1, 0.1, 0.0]))


def test_state_dict_round_trip():
    p = torch.randn(4, requires_grad=True)
    opt = BatchManhattan([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(4)
    opt.step()
    opt2 = BatchManhattan([p], lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_bad_arguments():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="lr must be >= 0, got -1"):
        BatchManhattan(p, lr=-1)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0 and dampening = 0"):
        BatchManhattan(p, lr=0.1, nesterov=True)
