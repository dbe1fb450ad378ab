"""Built-in policies, one module per family: :mod:`policies.batching`,
:mod:`policies.scheduling` and :mod:`policies.routing`.

They register lazily by name in :mod:`simulator.registry`; nothing here is imported until an
experiment names it.
"""
