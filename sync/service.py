"""One sync run of one tenant's resource under its lease: what the command and the tasks call."""

from __future__ import annotations

from eshops.models import Eshop
from shoptet_api.client import ShoptetClient
from sync import resources
from sync.engine import Budget, Engine, Outcome, Progress, SyncStopped
from sync.lease import Lease

__all__ = ["Budget", "Outcome", "SyncStopped", "run_resource"]


def run_resource(
    eshop: Eshop,
    resource_name: str,
    *,
    full: bool = False,
    budget: Budget | None = None,
    wait: float = 0.0,
    progress: Progress | None = None,
) -> tuple[Outcome, float]:
    """Run the sync until done, the budget is spent or a job must be waited for.

    Returns the outcome and, for WAITING, the seconds until it is worth calling again. Raises
    `LeaseHeld` when another run holds the tenant's resource, `SyncStopped` when the tenant may
    no longer call the API, and Shoptet errors as they come (the checkpoint is saved first).
    """
    if not eshop.can_call_api:
        state = "paused" if eshop.processing_paused_at else eshop.status
        raise SyncStopped(f"e-shop {eshop.eshop_id} is {state}")
    resource = resources.get(resource_name)
    with (
        Lease(eshop.eshop_id, resource.name, wait=wait) as lease,
        ShoptetClient(eshop) as client,
    ):
        engine = Engine(
            eshop, resource, client=client, progress=progress, lost=lease.lost.is_set
        )
        outcome = engine.run(full=full, budget=budget)
        return outcome, engine.wait_seconds
