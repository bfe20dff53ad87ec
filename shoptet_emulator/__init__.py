"""A real HTTP Shoptet emulator for development, demos and tests.

``ShoptetEmulator`` plays the partner OAuth server, the API and each e-shop's admin
login server on one loopback port, with fault knobs and counters. It never imports
Django, so plain scripts and benchmarks can use it; ``shoptet_emulator.testing``
holds the pytest fixtures and ``manage.py shoptet_emulator`` runs it standalone.
"""

from __future__ import annotations

from shoptet_emulator.server import ShoptetEmulator
from shoptet_emulator.state import EmulatedEshop, EmulatorStats, Webhook

__all__ = ["EmulatedEshop", "EmulatorStats", "ShoptetEmulator", "Webhook"]
