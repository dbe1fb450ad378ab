"""Workloads: arrival processes, request-size distributions, trace readers, and the generator
that turns a workload spec into a :class:`simulator.request.RequestTable`.

Arrival processes and size distributions are registered like policies (registries
``ARRIVALS`` and ``SIZES`` in :mod:`simulator.registry`), so a researcher adds their own from
their module as ``my_lab.arrivals:Diurnal``.
"""
