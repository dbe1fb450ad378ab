"""Workloads: arrival processes, request-size distributions, trace readers and trace tools,
and the request mix that turns a workload spec into request columns.

* :mod:`workloads.arrivals` -- arrival processes (Poisson, Gamma and Weibull renewal, MMPP,
  time-varying rates by thinning, replay, closed-loop clients);
* :mod:`workloads.sizes` -- request-size distributions;
* :mod:`workloads.traces` -- locating files, the :class:`~workloads.traces.Trace` container and
  its tools (windows, caps, rate scaling, splitting);
* :mod:`workloads.readers` -- the trace formats (Azure LLM 2023/2024, Mooncake, BurstGPT, Azure
  Functions 2019/2021, any CSV or parquet table);
* :mod:`workloads.mix` -- request classes, shares and merged arrival streams to columns;
* :mod:`workloads.fitting` -- fitting arrival and length models to a trace;
* :mod:`workloads.describe` -- ``ldsim workload describe``.

Arrival processes, size distributions and trace readers are registered like policies
(registries ``ARRIVALS``, ``SIZES`` and ``TRACES`` in :mod:`simulator.registry`), so a
researcher adds their own from their module as ``my_lab.arrivals:Diurnal`` or through the
entry-point groups ``ldsim.arrivals``, ``ldsim.sizes`` and ``ldsim.traces``.
"""
