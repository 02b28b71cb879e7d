"""A URLconf for the proxy tests only: the site's own, plus a page that says what address it saw."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from supportsite.urls import urlpatterns as site_urlpatterns


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.META.get("REMOTE_ADDR", ""), content_type="text/plain")


urlpatterns = [path("whoami/", whoami), *site_urlpatterns]
