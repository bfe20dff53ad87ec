"""The tenant list's search: a number is an exact eshop id (nothing else matches it), text is a
substring of name, URL or e-mail, and on PostgreSQL both are answered from an index."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.db import connection
from django.test import Client
from django.test.client import RequestFactory

from eshops.admin import EshopAdmin
from eshops.models import Eshop

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/eshops/eshop/"


def found(client: Client, q: str) -> set[int]:
    response = client.get(CHANGELIST, {"q": q})
    assert response.status_code == 200
    return {eshop.eshop_id for eshop in response.context["cl"].result_list}


@pytest.fixture
def shops(eshop_factory: Callable[..., Eshop]) -> dict[str, Eshop]:
    return {
        "target": eshop_factory(
            eshop_id=5150,
            name="Pekárna Na Rohu",
            url="https://pekarna-rohu.cz/",
            contact_email="pekar@rohu.example",
        ),
        # The target's id appears in its name, URL and e-mail: a substring match would list it.
        "lookalike": eshop_factory(
            eshop_id=77,
            name="Shop 5150",
            url="https://shop-5150.example/",
            contact_email="5150@shop.example",
        ),
    }


def test_a_number_finds_exactly_that_eshop_id(
    admin_client: Client, shops: dict[str, Eshop]
) -> None:
    assert found(admin_client, "5150") == {5150}
    assert found(admin_client, " 77 ") == {77}
    assert found(admin_client, "515") == set()
    assert found(admin_client, "9" * 30) == set()  # beyond any id: no error, no match


def test_text_finds_by_name_url_or_email_case_insensitively(
    admin_client: Client, shops: dict[str, Eshop]
) -> None:
    assert found(admin_client, "pekárna na") == {5150}
    assert found(admin_client, "PEKARNA-ROHU.cz") == {5150}
    assert found(admin_client, "pekar@rohu") == {5150}
    assert found(admin_client, "shop-5150") == {77}
    assert found(admin_client, "@") == {5150, 77}
    assert found(admin_client, "no such shop") == set()


@pytest.fixture
def no_seq_scan() -> Iterator[None]:
    """Make the planner use any index that can answer (a test table is too small to prefer one)."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET enable_seqscan")


def search_plan(term: str) -> str:
    request = RequestFactory().get(CHANGELIST, {"q": term})
    model_admin = EshopAdmin(Eshop, admin_site=None)  # type: ignore[arg-type]
    queryset, _ = model_admin.get_search_results(
        request, Eshop.objects.order_by(), term
    )
    return queryset.explain()


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="trigram indexes are PostgreSQL's"
)
@pytest.mark.usefixtures("shops", "no_seq_scan")
def test_search_is_answered_from_indexes_on_postgresql() -> None:
    by_id = search_plan("5150")
    by_text = search_plan("rohu")

    assert "eshops_eshop_eshop_id" in by_id  # the unique constraint's index
    for index in (
        "eshop_name_trgm_idx",
        "eshop_url_trgm_idx",
        "eshop_contact_email_trgm_idx",
    ):
        assert index in by_text, by_text
