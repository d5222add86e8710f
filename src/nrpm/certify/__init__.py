"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld, Kolter 2019), also of reprogrammed models.

- :mod:`.smoothing`: PREDICT and CERTIFY of the smoothed classifier, the Clopper-Pearson bound;
- :mod:`.runner`: :func:`run_certify`, every sample for every (lam, sigma), resumable, with result files;
- :mod:`.outputs`: certified accuracy against radius as table.md, results.csv and certified.png.

Gaussian noise is added to inputs in [0, 1] and not clipped, as in Cohen et al.
"""

from .outputs import certified_accuracy, radius_grid
from .runner import NOISE, RESULTS_FORMAT, CertifySettings, max_certifiable_radius, run_certify, sample_generator
from .smoothing import ABSTAIN, Certificate, certify, lower_confidence_bound, predict, sample_counts

__all__ = ["ABSTAIN", "Certificate", "predict", "certify", "lower_confidence_bound", "sample_counts",
           "run_certify", "CertifySettings", "sample_generator", "max_certifiable_radius", "certified_accuracy", "radius_grid",
           "RESULTS_FORMAT", "NOISE"]
