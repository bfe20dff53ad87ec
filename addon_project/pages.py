"""The service's own start page (the admin's "View site") and /favicon.ico."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_safe


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """What this service is, for a person who opens its address."""
    return render(request, "home.html")


@require_safe
def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico on their own; send them to the static SVG icon."""
    # Resolved per request: the manifest's hashed name exists only after collectstatic.
    return HttpResponseRedirect(static("eshops/favicon.svg"))
