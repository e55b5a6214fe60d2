"""Pyro models as models of this library: :func:`from_pyro` and :class:`PyroGuide`.

``from_pyro(model_fn, observed="x")`` wraps a Pyro program that describes **one** observation (its latent
``pyro.sample`` sites, discrete or continuous, the observed site, and its ``pyro.param`` s) into the model
contract of ``docs/DESIGN.md``:

- ``sample(n, generator=None) -> [z_L, ..., z_1, x]``: the latent sites **in the order the program samples
  them**, then the observed site, each flattened to ``[n, D]``. A generative program samples parents before
  children, so its first latent site is the top layer ``z_L`` and the last one ``z_1`` (the library's top-first
  order). A site may be vector-valued (``.to_event(k)`` or a ``pyro.plate`` inside the program): ``D`` is the
  number of elements of one draw, flattened in C order, and ``log_joint`` restores the site's shape.
- ``log_joint(x, zs, per_layer=False)``: the program conditioned on the values (``poutine.condition``) and
  traced (``poutine.trace``); each site's ``log_prob`` (with Pyro's scale and mask) summed over its elements.
  Leading axes broadcast as for a ``HierarchicalModel`` (``[K, B]`` particles against ``[B]`` data); with
  ``per_layer=True`` one term per site, in the order above.

How a batch is drawn: the program runs inside one more ``pyro.plate`` of size ``n`` (name
``"_wakesleep_batch"``) at the dimension left of the program's own plates, so every site gets a leading batch
axis; write the program for one observation, with ``.to_event`` or ``pyro.plate`` for vector-valued sites.

Parameters: every ``pyro.param`` the program reads becomes a ``torch.nn.Parameter`` of the wrapped module, named
``params.<name>`` (dots in the Pyro name become ``_``; :meth:`PyroModel.parameter_name`), holding the
*unconstrained* value as Pyro's param store does (``pyro.param(..., constraint=positive)`` stores the log).
The program reads the constrained value, so the library's algorithms learn the Pyro parameters by autograd. A
``pyro.param`` whose initial value is itself an ``nn.Parameter`` (``pyro.module``) is shared, not copied. The
wrapped model never reads or writes Pyro's global param store: the initial values are those in the program
(or ``init=``), evaluated once when the model is wrapped.

Seeded sampling: Pyro's distributions draw from torch's global RNG and take no generator. ``sample(n,
generator=g)`` draws one 62-bit seed from ``g`` and runs the program under torch's global RNG seeded with it
inside ``torch.random.fork_rng`` (the CPU generator and, for a model on a GPU, that device's), so the draw is a
function of ``g``'s state, ``g`` advances, and the global RNG is left as it was. Without a generator the global
RNG is used directly (as the Trainer's seeding expects).

Dtype: while the program runs, torch's default dtype is the model's (float32 or float64), so ``torch.zeros(d)``
inside it follows ``model.double()``. Tensors made on another device are the program's own business: build
them from a parameter (``new_zeros``) for a model on a GPU.

Latent types for the library's proposals: each latent site's support (``site.family.support``) is read from
its distribution: ``real``, ``positive`` (``positive``/``nonnegative`` continuous), ``binary`` (``boolean``),
``categorical`` (``integer_interval(0, C - 1)``, e.g. ``Categorical``), ``count`` (non-negative integers),
``interval`` or ``other``. :func:`wakesleep.algorithms.proposals.model_layers` reads them through
:meth:`PyroModel.proposal_layers`, so ``rws``, ``vimco`` and ``bbvi`` build their layered proposal for a Pyro
model; :class:`PyroGuide` turns a Pyro guide function into a proposal instead (``rws``'s ``proposal=``
option).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.models.hierarchical import ModelBase

__all__ = ["PyroGuide", "PyroModel", "PyroSite", "SiteFamily", "from_pyro"]

BATCH_PLATE = "_wakesleep_batch"
_MODULE_DIVIDER = "$$$"  # pyro.module's parameter names: "<module>$$$<parameter>"


# --------------------------------------------------------------------------------------------------------
# Pyro, imported when first used
# --------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _pyro() -> SimpleNamespace:
    """Pyro's modules and the two messengers of this module (built once, on first use)."""
    try:
        import pyro
        import pyro.distributions
        import pyro.poutine
        from pyro.distributions.util import scale_and_mask
        from pyro.poutine.messenger import Messenger
        from pyro.poutine.subsample_messenger import _Subsample
    except ImportError as exc:
        raise WakesleepError(
            "from_pyro: Pyro is not installed (pip install 'wakesleep[pyro]', or pip install pyro-ppl)"
        ) from exc

    class ParamMessenger(Messenger):
        """Answers every ``pyro.param`` from the owner module's parameters (the global param store is not used)."""

        def __init__(self, owner: nn.Module, discover: bool) -> None:
            super().__init__()
            self.owner, self.discover = owner, discover

        def _pyro_param(self, msg: dict) -> None:
            args = msg["args"]
            init = args[1] if len(args) > 1 else None
            constraint = msg["kwargs"].get("constraint")
            msg["value"] = _param_value(self.owner, args[0], init, constraint, self.discover)
            msg["done"] = True

    class SiteRecorder(Messenger):
        """Remembers the sample site in progress and the last finished one (for error messages)."""

        def __init__(self) -> None:
            super().__init__()
            self.current: str | None = None
            self.finished: str | None = None

        def _process_message(self, msg: dict) -> None:
            if msg["type"] == "sample" and not isinstance(msg["fn"], _Subsample):
                self.current = msg["name"]

        def _postprocess_message(self, msg: dict) -> None:
            if msg["type"] == "sample" and not isinstance(msg["fn"], _Subsample):
                self.finished = msg["name"]

        def where(self) -> str:
            if self.current is not None and self.current != self.finished:
                return f"at site {self.current!r}"
            if self.finished is not None:
                return f"after site {self.finished!r}"
            return "before its first sample site"

    return SimpleNamespace(
        pyro=pyro,
        poutine=pyro.poutine,
        dist=pyro.distributions,
        constraints=torch.distributions.constraints,
        scale_and_mask=scale_and_mask,
        ParamMessenger=ParamMessenger,
        SiteRecorder=SiteRecorder,
        Subsample=_Subsample,
    )


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` (float32 or float64) while the program runs."""
    old = torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64) or dtype == old:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run under torch's global RNG seeded from ``generator`` (one draw), restored afterwards; no-op without one."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------------------
# parameters: pyro.param -> nn.Parameter of the owner module
# --------------------------------------------------------------------------------------------------------
def _init_params(owner: nn.Module, init: Mapping[str, Any] | None, dtype: torch.dtype | None) -> None:
    owner.params = nn.ParameterDict()
    owner._param_keys: dict[str, str] = {}
    owner._param_constraints: dict[str, Any] = {}
    owner._shared_params: set[str] = set()
    owner._param_init = dict(init or {})
    owner._param_dtype = dtype


def _param_value(owner: nn.Module, name: str, init: Any, constraint: Any, discover: bool) -> Tensor:
    """The value of ``pyro.param(name, init, constraint)`` for ``owner``; registers it on the discovery run."""
    if constraint is None:
        constraint = torch.distributions.constraints.real
    if name not in owner._param_keys:
        if not discover:
            raise WakesleepError(
                f"from_pyro: pyro.param {name!r} first appeared after the model was wrapped (every run must read "
                "the same parameters)"
            )
        _register_param(owner, name, init, constraint)
    key = owner._param_keys[name]
    param = owner.params[key]
    if name in owner._shared_params:
        return param
    return torch.distributions.transform_to(owner._param_constraints[name])(param)


def _register_param(owner: nn.Module, name: str, init: Any, constraint: Any) -> None:
    if name in owner._param_init:
        init = owner._param_init[name]
    elif callable(init) and not isinstance(init, Tensor):
        init = init()
    if init is None:
        raise WakesleepError(
            f"from_pyro: pyro.param {name!r} has no initial value (the wrapped model does not read Pyro's param "
            "store: give one in the program or in init=)"
        )
    key = name.replace(".", "_")
    if key in owner.params:
        raise WakesleepError(f"from_pyro: pyro.param {name!r} and another parameter both map to params.{key}")
    if isinstance(init, nn.Parameter) and name not in owner._param_init:  # pyro.module: the module's own tensor
        owner.params[key] = init
        owner._shared_params.add(name)
    else:
        value = torch.as_tensor(init).detach()
        if owner._param_dtype is not None and value.is_floating_point():
            value = value.to(owner._param_dtype)
        if not value.is_floating_point():
            raise WakesleepError(f"from_pyro: pyro.param {name!r} must be a floating-point tensor, got {value.dtype}")
        try:
            inside = bool(constraint.check(value).all())
        except Exception:  # a constraint that cannot check: trust the value
            inside = True
        if not inside:
            raise WakesleepError(f"from_pyro: pyro.param {name!r}: the initial value is outside its constraint")
        owner.params[key] = nn.Parameter(torch.distributions.transform_to(constraint).inv(value).clone())
    owner._param_keys[name] = key
    owner._param_constraints[name] = constraint


def _wrap_callable(owner: nn.Module, fn: Callable, what: str) -> None:
    if not callable(fn):
        raise WakesleepError(f"from_pyro: {what} must be a callable (a Pyro program), got {type(fn).__name__}")
    if isinstance(fn, nn.Module):  # its own parameters are the owner's too
        owner.module = fn


# --------------------------------------------------------------------------------------------------------
# sites
# --------------------------------------------------------------------------------------------------------
class SiteFamily:
    """What the library's proposals read of a site's distribution: ``name``, ``support`` and ``categories``.

    Parameters
    ----------
    name : str
        The distribution's class name (e.g. ``"Normal"``).
    support : str
        ``real``, ``positive``, ``binary``, ``categorical``, ``count``, ``interval`` or ``other``.
    categories : int
        Number of values of a ``categorical`` site (0 otherwise).
    """

    def __init__(self, name: str, support: str, categories: int = 0) -> None:
        self.name, self.support, self.categories = name, support, int(categories)

    def __repr__(self) -> str:
        extra = f", categories={self.categories}" if self.categories else ""
        return f"SiteFamily({self.name!r}, {self.support!r}{extra})"


class PyroSite:
    """One sample site of a wrapped Pyro program: its name, per-draw shape and support.

    Attributes
    ----------
    name : str
    shape : tuple of int
        Shape of one draw (the site's value without the batch axis).
    dim : int
        ``prod(shape)``: the width of the site's ``[n, dim]`` columns in ``sample`` and ``log_joint``.
    family : SiteFamily
        ``support`` and ``categories`` (the layer protocol of ``wakesleep.algorithms.proposals``).
    value_dtype : torch.dtype or None
        The integer dtype of the site's values (e.g. ``torch.int64`` for ``Categorical``), None for floats;
        the library stores them as floats of the model's dtype and converts back for the program.
    has_rsample : bool
        Whether the distribution has a reparameterised sampler.
    """

    def __init__(
        self, name: str, shape: tuple[int, ...], family: SiteFamily, value_dtype: torch.dtype | None, rsample: bool
    ) -> None:
        self.name, self.shape, self.family = name, tuple(int(s) for s in shape), family
        self.dim = int(math.prod(self.shape))
        self.value_dtype, self.has_rsample = value_dtype, bool(rsample)

    def embed(self, value: Tensor) -> Tensor:
        """The value as a vector: one-hot codes (flattened) for a categorical site, the value itself otherwise."""
        if self.family.support != "categorical":
            return value
        oh = torch.nn.functional.one_hot(value.long(), self.family.categories).to(value.dtype)
        return oh.reshape(*oh.shape[:-2], -1)

    @property
    def embed_dim(self) -> int:
        return self.dim * self.family.categories if self.family.support == "categorical" else self.dim

    def __repr__(self) -> str:
        return f"PyroSite({self.name!r}, shape={self.shape}, {self.family!r})"


def _is_zero(bound: Any) -> bool:
    try:
        return bool(torch.all(torch.as_tensor(bound) == 0))
    except Exception:
        return False


def _support(site: dict, latent: bool) -> SiteFamily:
    """The :class:`SiteFamily` of a traced site (a WakesleepError naming a latent site without support info)."""
    C = torch.distributions.constraints
    fn = site["fn"]
    base = fn
    while hasattr(base, "base_dist"):  # Independent, Masked, Expanded...: name the distribution itself
        base = base.base_dist
    dname = type(base).__name__
    try:
        c = fn.support
    except (NotImplementedError, AttributeError):
        c = None
    while hasattr(c, "base_constraint"):  # independent(...), a mixture's constraint: the elementwise one
        c = c.base_constraint
    if c is None or isinstance(c, C._Dependent):
        if latent:
            raise WakesleepError(
                f"from_pyro: site {site['name']!r}: its distribution ({dname}) declares no support (define .support)"
            )
        return SiteFamily(dname, "other")
    discrete = bool(getattr(c, "is_discrete", False))
    if isinstance(c, C._Real):
        return SiteFamily(dname, "real")
    if isinstance(c, C._Boolean):
        return SiteFamily(dname, "binary")
    if isinstance(c, C.integer_interval) and _is_zero(c.lower_bound):
        return SiteFamily(dname, "categorical", int(torch.as_tensor(c.upper_bound).max()) + 1)
    if isinstance(c, C.greater_than | C.greater_than_eq) and not discrete and _is_zero(c.lower_bound):
        return SiteFamily(dname, "positive")
    if isinstance(c, C._IntegerGreaterThan) or (discrete and isinstance(c, C.greater_than_eq)):
        return SiteFamily(dname, "count")
    if isinstance(c, C.interval | C.half_open_interval):
        return SiteFamily(dname, "interval")
    return SiteFamily(dname, "other")


def _sample_sites(trace: Any) -> list[tuple[str, dict]]:
    """The trace's sample sites in program order, without plates and ``pyro.deterministic`` sites."""
    subsample = _pyro().Subsample
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not isinstance(site["fn"], subsample)
        and not site["infer"].get("_deterministic", False)
    ]


def _site_log_prob(site: dict, value: Tensor, n: int, what: str) -> Tensor:
    """``log_prob`` of one site (scale and mask applied) summed over everything but the batch axis: ``[n]``."""
    P = _pyro()
    try:
        lp = site["fn"].log_prob(value)
    except Exception as exc:
        raise WakesleepError(f"{what}: log_prob failed at site {site['name']!r}: {_one_line(exc)}") from exc
    lp = P.scale_and_mask(lp, site["scale"], site["mask"])
    if not isinstance(lp, Tensor) or lp.ndim == 0:
        return torch.as_tensor(lp, dtype=value.dtype if value.is_floating_point() else None).expand(n)
    if lp.shape[0] != n:
        raise WakesleepError(f"{what}: site {site['name']!r}: log_prob of shape {tuple(lp.shape)} has no batch axis")
    return lp.reshape(n, -1).sum(-1)


# --------------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------------
class PyroModel(ModelBase):
    """A Pyro program wrapped into the library's model contract (build it with :func:`from_pyro`).

    Attributes
    ----------
    model_fn : callable
        The Pyro program (one observation).
    observed : str
        Name of the observed site (``x``).
    latent_names : list of str
        The latent sites, in program order (top first for a top-down program).
    sites : dict
        Site name -> :class:`PyroSite`, latents then the observed site.
    dims : list of int
        Widths of ``sample``'s columns, latents then the observation.
    obs_dim : int
    params : nn.ParameterDict
        The program's ``pyro.param`` s (unconstrained values); :meth:`param` gives a constrained value.
    max_plate_nesting : int
        Plate dimensions the program uses itself (the batch plate goes left of them).
    """

    def __init__(
        self,
        model_fn: Callable[..., Any],
        observed: str = "x",
        *,
        model_args: Sequence[Any] = (),
        model_kwargs: Mapping[str, Any] | None = None,
        init: Mapping[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        max_plate_nesting: int | None = None,
    ) -> None:
        super().__init__()
        _pyro()
        if not isinstance(observed, str) or not observed:
            raise WakesleepError(f"from_pyro: observed must be the name of a sample site, got {observed!r}")
        _wrap_callable(self, model_fn, "model_fn")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise WakesleepError(f"from_pyro: dtype must be a floating-point dtype, got {dtype}")
        self.model_fn, self.observed = model_fn, observed
        self.model_args, self.model_kwargs = tuple(model_args), dict(model_kwargs or {})
        _init_params(self, init, dtype)
        self._anchor = self._anchor.to(dtype)

        with torch.no_grad():
            # 1. unbatched: parameters, sites, the program's own plates
            self.max_plate_nesting = 0
            trace = self._run(None, None, discover=True)
            sites = _sample_sites(trace)
            names = [n for n, _ in sites]
            if not sites:
                raise WakesleepError("from_pyro: the model has no sample sites")
            if observed not in names:
                raise WakesleepError(
                    f"from_pyro: the model has no sample site {observed!r} (observed=); its sample sites: "
                    + ", ".join(repr(n) for n in names)
                )
            for name, site in sites:
                if site["is_observed"]:
                    raise WakesleepError(
                        f"from_pyro: site {name!r} is observed inside the model (obs= or pyro.factor); the program "
                        f"must sample every site freely, and observed={observed!r} names the observation"
                    )
            if len(names) < 2:
                raise WakesleepError(f"from_pyro: the model has no latent sample site (only {observed!r})")
            unknown = sorted(set(self._param_init) - set(self._param_keys))
            if unknown:
                raise WakesleepError(f"from_pyro: init= names no pyro.param of the model: {', '.join(unknown)}")
            dims = [-f.dim for _, s in sites for f in s["cond_indep_stack"] if f.dim is not None]
            nesting = max(dims, default=0)
            if max_plate_nesting is not None:
                if int(max_plate_nesting) < nesting:
                    raise WakesleepError(
                        f"from_pyro: max_plate_nesting={max_plate_nesting} but the model uses {nesting} plate dims"
                    )
                nesting = int(max_plate_nesting)
            self.max_plate_nesting = nesting
            # 2. batched (two draws): per-draw shapes and supports
            trace = self._run(2, None)
            self._order = names
            self.sites: dict[str, PyroSite] = {}
            for name, site in self._checked_sites(trace, 2, "from_pyro"):
                value = site["value"]
                vdt = None if value.is_floating_point() else value.dtype
                fam = _support(site, latent=name != observed)
                self.sites[name] = PyroSite(name, tuple(value.shape[1:]), fam, vdt, site["fn"].has_rsample)
        self.latent_names = [n for n in names if n != observed]
        self.sites = {**{n: self.sites[n] for n in self.latent_names}, observed: self.sites[observed]}
        self.to(dtype)

    # --- structure -----------------------------------------------------------------------------------
    @property
    def dims(self) -> list[int]:
        return [s.dim for s in self.sites.values()]

    @property
    def obs_dim(self) -> int:
        return self.sites[self.observed].dim

    def proposal_layers(self) -> list[PyroSite]:
        """The sites as the layers a proposal reads (latents top first, then the observation)."""
        return list(self.sites.values())

    @property
    def param_names(self) -> list[str]:
        """The Pyro names of the program's ``pyro.param`` s."""
        return list(self._param_keys)

    def parameter_name(self, name: str) -> str:
        """The ``named_parameters()`` name of the ``pyro.param`` called ``name`` (e.g. ``params.B``)."""
        if name not in self._param_keys:
            raise WakesleepError(f"from_pyro: no pyro.param {name!r} (known: {', '.join(self._param_keys)})")
        return f"params.{self._param_keys[name]}"

    def param(self, name: str) -> Tensor:
        """The constrained value of the ``pyro.param`` called ``name`` (what the program reads)."""
        self.parameter_name(name)  # a WakesleepError for an unknown name
        return _param_value(self, name, None, None, False)

    # --- running the program -------------------------------------------------------------------------
    def _run(self, n: int | None, data: dict[str, Tensor] | None, discover: bool = False) -> Any:
        """Trace the program (``n`` draws in the batch plate, or unbatched), conditioned on ``data``."""
        P = _pyro()
        rec = P.SiteRecorder()
        fn, args, kwargs, nesting = self.model_fn, self.model_args, self.model_kwargs, self.max_plate_nesting

        def program() -> Any:
            if n is None:
                with rec:
                    return fn(*args, **kwargs)
            with P.pyro.plate(BATCH_PLATE, n, dim=-(nesting + 1)), rec:
                return fn(*args, **kwargs)

        prog = P.poutine.condition(program, data=data) if data else program
        with _default_dtype(self.dtype), P.ParamMessenger(self, discover):
            try:
                return P.poutine.trace(prog).get_trace()
            except WakesleepError as exc:  # Pyro's trace appends its shape table: keep the first line
                raise WakesleepError(str(exc).strip().splitlines()[0]) from exc.__cause__
            except Exception as exc:
                raise WakesleepError(f"from_pyro: the model raised {rec.where()}: {_one_line(exc)}") from exc

    def _checked_sites(self, trace: Any, n: int, what: str) -> list[tuple[str, dict]]:
        """The trace's sample sites, checked against the wrapped structure (names, batch axis, shapes)."""
        sites = _sample_sites(trace)
        names = [name for name, _ in sites]
        if hasattr(self, "_order") and names != self._order:
            raise WakesleepError(
                f"{what}: the model's sample sites changed between runs ({', '.join(names)} instead of "
                f"{', '.join(self._order)}); the program must sample the same sites every time"
            )
        for name, site in sites:
            bs = tuple(site["fn"].batch_shape)
            if len(bs) != self.max_plate_nesting + 1 or bs[0] != n or site["value"].shape[:1] != (n,):
                raise WakesleepError(
                    f"{what}: site {name!r} has batch shape {bs} outside the model's plates; declare vector-valued "
                    "sites with .to_event(...) or pyro.plate"
                )
            if (
                hasattr(self, "sites")
                and name in self.sites
                and tuple(site["value"].shape[1:]) != self.sites[name].shape
            ):
                raise WakesleepError(
                    f"{what}: site {name!r} changed shape ({tuple(site['value'].shape[1:])} instead of "
                    f"{self.sites[name].shape})"
                )
        return sites

    def _program_value(self, name: str, value: Tensor, batch: torch.Size, n: int) -> Tensor:
        """``[..., D]`` library columns -> the site's ``[n, *shape]`` value (its own integer dtype if it has one)."""
        site = self.sites[name]
        if value.shape[-1] != site.dim:
            raise WakesleepError(f"log_joint: site {name!r} takes [..., {site.dim}] values, got {tuple(value.shape)}")
        value = value.expand(*batch, site.dim).reshape(n, *site.shape)
        return value.to(site.value_dtype) if site.value_dtype is not None else value

    # --- the model contract --------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Ancestral sample ``[z_L, ..., z_1, x]`` (latent sites in program order), each ``[n, D]`` (no gradient).

        Parameters
        ----------
        n : int
            Number of draws.
        generator : torch.Generator, optional
            Seeds the draw (one seed is drawn from it and the program runs under the global RNG seeded with it,
            restored afterwards; module docstring). Without it, torch's global RNG is used.
        """
        n = int(n)
        with torch.no_grad(), _seeded(generator, self.device):
            trace = self._run(n, None)
        self._checked_sites(trace, n, "sample")
        return [
            trace.nodes[name]["value"].reshape(n, site.dim).to(self.dtype).detach() for name, site in self.sites.items()
        ]

    def log_joint(self, x: Tensor, zs: list[Tensor], per_layer: bool = False) -> Tensor | list[Tensor]:
        """log p(x, z), broadcasting over leading axes (``x [..., Dx]``, ``zs = [z_L, ..., z_1]``, each ``[..., D]``).

        Returns the broadcast batch shape, or with ``per_layer`` the list of site terms (latents, then ``x``).
        """
        if len(zs) != len(self.latent_names):
            raise ValueError(f"log_joint: expected {len(self.latent_names)} latent layers, got {len(zs)}")
        values = [*zs, x]
        batch = torch.broadcast_shapes(*(v.shape[:-1] for v in values))
        n = math.prod(batch)
        data = {name: self._program_value(name, v, batch, n) for name, v in zip(self.sites, values, strict=True)}
        trace = self._run(n, data)
        sites = dict(self._checked_sites(trace, n, "log_joint"))
        terms = [_site_log_prob(sites[name], data[name], n, "log_joint").reshape(batch) for name in self.sites]
        return self._joint(terms, per_layer)

    def extra_repr(self) -> str:
        return " -> ".join(f"{n}[{s.dim}, {s.family.name}]" for n, s in self.sites.items())


def from_pyro(
    model_fn: Callable[..., Any],
    observed: str = "x",
    *,
    model_args: Sequence[Any] = (),
    model_kwargs: Mapping[str, Any] | None = None,
    init: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    max_plate_nesting: int | None = None,
) -> PyroModel:
    """Wrap a Pyro program into the library's model contract (module docstring).

    Parameters
    ----------
    model_fn : callable
        A Pyro program describing **one** observation: ``pyro.sample`` latent sites (discrete or continuous;
        vector-valued through ``.to_event`` or ``pyro.plate``), one sample site for the observation (sampled
        freely, no ``obs=``) and ``pyro.param`` s. It runs twice here (under torch's global RNG) to find them.
        An ``nn.Module`` program is registered as a submodule (its parameters are learned too).
    observed : str
        Name of the observed site.
    model_args, model_kwargs
        Fixed arguments passed to ``model_fn`` on every run.
    init : dict, optional
        ``pyro.param`` name -> initial (constrained) value, instead of the one in the program.
    dtype : torch.dtype, optional
        The model's dtype (default: torch's default dtype); ``model.double()`` works later too.
    max_plate_nesting : int, optional
        Plate dimensions reserved for the program (default: those it uses).

    Returns
    -------
    PyroModel
        ``sample(n, generator=None)``, ``log_joint(x, zs, per_layer=False)``, ``latent_names``, ``dims``,
        ``obs_dim``, ``sites``, ``dtype``/``device``; learnable by ``al_ws`` and by ``rws``, ``vimco`` and
        ``bbvi`` (their layered proposal, or a :class:`PyroGuide` as ``rws``'s ``proposal=``).

    Raises
    ------
    WakesleepError
        One line: Pyro missing, no site called ``observed``, an observed site inside the program, no latent site,
        a latent site whose distribution declares no support, a ``pyro.param`` without an initial value, or an
        exception raised by the program (naming the site it was at).
    """
    return PyroModel(
        model_fn,
        observed,
        model_args=model_args,
        model_kwargs=model_kwargs,
        init=init,
        dtype=dtype,
        max_plate_nesting=max_plate_nesting,
    )


# --------------------------------------------------------------------------------------------------------
# a Pyro guide as a proposal q(z | x)
# --------------------------------------------------------------------------------------------------------
class PyroGuide(nn.Module):
    """A Pyro guide function as a proposal q(z | x) (the proposal protocol of ``docs/DESIGN.md``).

    ``guide_fn(x, *guide_args, **guide_kwargs)`` is called with a batch of observations ``x`` of shape
    ``[N, *observed site shape]`` inside the same batch plate as the model (so its sites have a leading batch
    axis of size N, like the model's); it must sample every latent site of the model (same names and shapes)
    and nothing else. Its ``pyro.param`` s (and an ``nn.Module`` guide's parameters) are this module's
    parameters: pass it as ``build_algorithm("rws", model, proposal=PyroGuide(model, guide_fn))`` and the Trainer
    learns them with its recognition optimiser. Parameters are named as in :class:`PyroModel` and are the
    guide's own even where a name is also a ``pyro.param`` of the model.

    Parameters
    ----------
    model : PyroModel
        The wrapped model (only its sites and plates are read; not registered as a submodule).
    guide_fn : callable
        The Pyro guide.
    guide_args, guide_kwargs
        Fixed extra arguments of ``guide_fn``.
    init : dict, optional
        ``pyro.param`` name -> initial (constrained) value.

    Attributes
    ----------
    reparameterized : bool
        Every latent site of the guide has a reparameterised sampler.
    """

    def __init__(
        self,
        model: PyroModel,
        guide_fn: Callable[..., Any],
        *,
        guide_args: Sequence[Any] = (),
        guide_kwargs: Mapping[str, Any] | None = None,
        init: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, PyroModel):
            raise WakesleepError(f"PyroGuide: model must be a model from from_pyro, got {type(model).__name__}")
        _wrap_callable(self, guide_fn, "guide_fn")
        object.__setattr__(self, "_model", model)  # plain attribute: the model's parameters are not the guide's
        self.guide_fn, self.guide_args, self.guide_kwargs = guide_fn, tuple(guide_args), dict(guide_kwargs or {})
        _init_params(self, init, model.dtype)
        with torch.no_grad():
            x = model.sample(2)[-1]
            trace = self._run(self._program_x(x, 1), 2, None, discover=True)
            unknown = sorted(set(self._param_init) - set(self._param_keys))
            if unknown:
                raise WakesleepError(f"PyroGuide: init= names no pyro.param of the guide: {', '.join(unknown)}")
            sites = dict(self._checked_sites(trace, 2))
        self.reparameterized = all(sites[n]["fn"].has_rsample for n in model.latent_names)
        self.to(dtype=model.dtype, device=model.device)

    @property
    def model(self) -> PyroModel:
        return self._model

    def _program_x(self, x: Tensor, k: int) -> Tensor:
        """``[B, Dx]`` -> ``[k * B, *obs shape]`` (the observed site's own dtype), particle-major."""
        site = self._model.sites[self._model.observed]
        if x.ndim != 2 or x.shape[1] != site.dim:
            raise WakesleepError(f"PyroGuide: x must be [batch, {site.dim}], got shape {tuple(x.shape)}")
        x = x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *site.shape)
        return x.to(site.value_dtype) if site.value_dtype is not None else x

    def _run(self, x: Tensor, n: int, data: dict[str, Tensor] | None, discover: bool = False) -> Any:
        P = _pyro()
        rec = P.SiteRecorder()
        fn, args, kwargs = self.guide_fn, self.guide_args, self.guide_kwargs
        nesting = self._model.max_plate_nesting

        def program() -> Any:
            with P.pyro.plate(BATCH_PLATE, n, dim=-(nesting + 1)), rec:
                return fn(x, *args, **kwargs)

        prog = P.poutine.condition(program, data=data) if data else program
        with _default_dtype(self._model.dtype), P.ParamMessenger(self, discover):
            try:
                return P.poutine.trace(prog).get_trace()
            except WakesleepError as exc:  # Pyro's trace appends its shape table: keep the first line
                raise WakesleepError(str(exc).strip().splitlines()[0]) from exc.__cause__
            except Exception as exc:
                raise WakesleepError(f"PyroGuide: the guide raised {rec.where()}: {_one_line(exc)}") from exc

    def _checked_sites(self, trace: Any, n: int) -> list[tuple[str, dict]]:
        sites = _sample_sites(trace)
        names = [name for name, _ in sites]
        latents = self._model.latent_names
        extra = [name for name in names if name not in latents]
        if extra:
            raise WakesleepError(f"PyroGuide: guide site {extra[0]!r} is not a latent site of the model")
        missing = [name for name in latents if name not in names]
        if missing:
            raise WakesleepError(f"PyroGuide: the guide has no site {missing[0]!r} (a latent site of the model)")
        for name, site in sites:
            shape = tuple(site["value"].shape)
            if shape[:1] != (n,) or shape[1:] != self._model.sites[name].shape:
                raise WakesleepError(
                    f"PyroGuide: site {name!r} has shape {shape[1:]} per draw (batch {shape[:1]}); the model's is "
                    f"{self._model.sites[name].shape}"
                )
        return sites

    def sample(self, x: Tensor, k: int = 1, reparameterize: bool | None = None) -> tuple[list[Tensor], Tensor]:
        """``k`` particles per row of ``x [B, Dx]``: ``(zs, log_q)``, zs top first, each ``[k, B, D]``, ``[k, B]``.

        ``reparameterize=False`` detaches the particles (``log_q`` then carries the gradient w.r.t. the guide's
        parameters at fixed particles); otherwise reparameterised sites keep their ``rsample`` graph.
        """
        B, dt = x.shape[0], self._model.dtype
        n = int(k) * B
        trace = self._run(self._program_x(x, int(k)), n, None)
        sites = dict(self._checked_sites(trace, n))
        zs, log_q = [], None
        for name in self._model.latent_names:
            site = sites[name]
            value = site["value"] if reparameterize is None or reparameterize else site["value"].detach()
            lq = _site_log_prob(site, value, n, "PyroGuide")
            log_q = lq if log_q is None else log_q + lq
            zs.append(value.reshape(int(k), B, self._model.sites[name].dim).to(dt))
        return zs, log_q.reshape(int(k), B)

    def log_prob(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """log q(z | x) for ``zs = [z_L, ..., z_1]`` (each ``[k, B, D]`` or ``[B, D]``), shape ``[k, B]`` or ``[B]``."""
        m = self._model
        if len(zs) != len(m.latent_names):
            raise ValueError(f"log_prob: expected {len(m.latent_names)} latent layers, got {len(zs)}")
        batch = torch.broadcast_shapes(*(z.shape[:-1] for z in zs), x.shape[:-1])
        n = math.prod(batch)
        xk = self._program_x(x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1]), 1)
        data = {name: m._program_value(name, z, batch, n) for name, z in zip(m.latent_names, zs, strict=True)}
        trace = self._run(xk, n, data)
        sites = dict(self._checked_sites(trace, n))
        total = None
        for name in m.latent_names:
            lq = _site_log_prob(sites[name], data[name], n, "PyroGuide")
            total = lq if total is None else total + lq
        return total.reshape(batch)
