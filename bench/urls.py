"""perfgate's URLs plus the yardsticks bench/api.py compares the status endpoint with:

- /bench/bare: the cheapest response Django gives (a JsonResponse);
- /bench/drf: the same through a DRF view with no authentication or rate limit;
- /bench/token: a DRF view with perfgate's token authentication and rate limit;
- /bench/token-select1: that plus one `SELECT 1` round trip to the database.

The last one is the floor of any endpoint that must read the database once per request.
"""

from django.db import connection
from django.http import JsonResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from perfgate_site.urls import urlpatterns as perfgate_urlpatterns


def bare(request):
    return JsonResponse({"status": "ok"})


class Drf(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []

    def get(self, request):
        return Response({"status": "ok"})


class Token(APIView):
    def get(self, request):
        return Response({"status": "ok"})


class TokenSelect1(APIView):
    def get(self, request):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return Response({"status": "ok"})


urlpatterns = [
    path("bench/bare", bare),
    path("bench/drf", Drf.as_view()),
    path("bench/token", Token.as_view()),
    path("bench/token-select1", TokenSelect1.as_view()),
    *perfgate_urlpatterns,
]
