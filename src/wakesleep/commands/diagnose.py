"""``wakesleep diagnose --run DIR``: how accurate a trained run's wake gradient and posterior read-out are.

At the trained parameters, after ``--sleeps`` sleep phases there, the algorithm's wake gradient on the first
``--points`` training points is compared per layer with reference gradients E_{p(z|x)}[grad log p(x, z)]
(exact enumeration for small discrete latent spaces, ``--repeats`` independent AIS runs of ``--chains`` chains
and ``--temperatures`` temperatures for sigmoid belief networks, else importance sampling from the prior), and
its posterior means with the references' (:func:`wakesleep.eval.diagnose.diagnose`). Prints one line per layer;
``--out FILE.json`` also writes the numbers.
"""

from __future__ import annotations

import argparse

from wakesleep.eval.diagnose import REFERENCES

__all__ = ["add_arguments", "run"]

#: the flags passed on to :func:`~wakesleep.eval.diagnose.diagnose` as its keyword arguments of the same name
PASSED_ON = tuple("points reference chains temperatures repeats importance_samples sleeps seed device".split())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the options of ``wakesleep diagnose``."""
    p.add_argument("--run", required=True, help="run directory written by 'wakesleep train'")
    p.add_argument("--points", type=int, default=100, help="first training points in the batch")
    p.add_argument("--reference", choices=REFERENCES, default="auto", help="reference posterior (default: auto)")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per point")
    p.add_argument("--temperatures", type=int, default=1000, help="AIS intermediate distributions")
    p.add_argument("--repeats", type=int, default=2, help="independent references (their agreement is printed)")
    p.add_argument("--importance-samples", type=int, default=100_000, help="prior draws per importance reference")
    p.add_argument("--sleeps", type=int, default=1, help="sleep phases at the trained parameters first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default=None, help="torch device (default: the run's)")
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Diagnose ``--run``; print the summary and write ``--out``."""
    from wakesleep import io as wio
    from wakesleep.eval.diagnose import diagnose
    from wakesleep.runtime import keep_freed_memory

    keep_freed_memory()
    result = diagnose(args.run, **{name: getattr(args, name) for name in PASSED_ON})
    for line in result.lines():
        print(line)
    if args.out:
        wio.save_json(args.out, result.to_dict())
    return 0
