"""Micro-benchmarks of what the package ships, runnable from an installed copy: ``bioplaus bench OP``.

One module per op of ``OPS``, each with its shapes (the paper's, or one given on the command line), its timed
cases and named baseline, its table and its command line (``add_arguments``, ``run``, ``main``).
``common`` holds what they share: the one timer (interleaved calls, cache flush, CUDA events), machine
ceilings and roofline floors, machine / version / git records, JSON results, peak-memory probes.
benchmarks/bench_<op>.py are thin scripts over these modules. The submodules are not imported here, so that
``python -m bioplaus_kernels.bench.lc2d`` (the CPU memory probe re-executes it) runs it once, as __main__.
"""

# op -> what it times (the help line of ``bioplaus bench OP``)
OPS = {
    "lc2d": "the LC layer's passes (fwd, dgrad, wgrad, step) against unfold+bmm",
    "linear": "linear_backward_input per feedback mode against torch's own layer (F.linear)",
    "feedback": "each feedback rule's layer step against bp and the straightforward pure-PyTorch rule",
    "tp": "a DTP / SDTP training step against the BP step and the pure-PyTorch DTP",
}
