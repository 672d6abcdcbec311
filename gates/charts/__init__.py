"""SVG charts drawn on the server: no JavaScript, no build step.

Pure code: they take plain numbers and return the SVG text, with the numbers also in words (the
``<desc>`` and the ``*_text`` functions, for screen readers and for the page under an image).

- ``history_svg``: one metric over a scenario's validations, each a point coloured by its outcome
  (bypassed builds get a ring), beside the baseline's own runs as points, with the band the
  decision used: history mode's prediction band (where one more run of the baseline falls,
  ``PredictionBand``) or, when the gate ran A and B side by side, the interval of the change at
  the current build (``ABInterval``); the fail threshold is a dashed line.
- ``distribution_svg``: the latency distribution of a run against its baseline, as a quantile
  plot of the stored percentiles (perfgate keeps percentiles, not raw samples).
- ``probe_svg``: one key of a watch's probes against its probe baseline.

Every label is measured with a conservative width per character (``text_width``) and ellipsized
(the full text in a ``<title>`` tooltip) so that no text leaves the picture.
"""

from gates.charts.distribution import Quantile, QuantileRange, distribution_svg, distribution_text
from gates.charts.history import ABInterval, BaselineRuns, Point, PredictionBand, history_svg, history_text
from gates.charts.probes import ProbeBand, ProbePoint, probe_svg, probe_text
from gates.charts.svg import fit, text_width

__all__ = [
    "ABInterval",
    "BaselineRuns",
    "Point",
    "PredictionBand",
    "ProbeBand",
    "ProbePoint",
    "Quantile",
    "QuantileRange",
    "distribution_svg",
    "distribution_text",
    "fit",
    "history_svg",
    "history_text",
    "probe_svg",
    "probe_text",
    "text_width",
]
