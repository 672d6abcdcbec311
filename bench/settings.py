"""Settings for bench/api.py: perfgate's own, plus a bare view to compare with."""

from perfgate_site.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
