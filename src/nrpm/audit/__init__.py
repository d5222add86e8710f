"""An adaptive-attack audit: does a (reprogrammed) model's robustness survive the checks that expose gradient
masking? One call, ``run_audit(model, x, y, budgets=...)``, returns an :class:`AuditReport` with seven checks,
each with its numbers and a pass / warn / fail verdict, following Carlini et al. (2019), "On Evaluating
Adversarial Robustness", Tramer et al. (2020), "On Adaptive Attacks to Adversarial Example Defenses", and
AutoAttack's built-in flags:

1. lam = 1 reproduces the base model's logits, and the model is deterministic;
2. input gradients are finite and non-zero on the evaluated samples;
3. robust accuracy falls as the budget grows and reaches about 0 at an unbounded budget (Linf 1.0);
4. more PGD steps (x4) and restarts (x5), and half the step size with twice the steps, find (almost) nothing more;
5. the black-box Square and SPSA attacks and random noise of the same budget are not stronger than the white-box
   attacks (FGSM, PGD, APGD-CE/DLR, PGD on the C&W margin loss);
6. transfer from the plain (lam = 1) model, a BPDA attack (the robust layers' backward replaced by the plain
   linear one), PGD with the IRLS weights detached in the backward pass and PGD on the gradient of a smoother
   IRLS estimator (eps x10, eps x100, K = 1; NRPM's weights 1/(|r| + eps) are sharp for a small eps) are not
   stronger than direct PGD;
7. AutoAttack (standard) agrees with the strongest of the above.

Accuracy comparisons use a stated tolerance ``tol`` (default 2 percentage points, never less than one sample):
a difference within ``tol`` passes, within ``2 * tol`` warns, beyond fails. Every attack also yields per-sample
results, so the report gives, per budget, the *worst case over all attacks* (a sample counts as robust only if
no attack broke it): the number to quote.

Works on any ``nn.Module`` mapping inputs in [0, 1] to logits; the lam-specific parts (check 1's lam = 1, check 6)
use the robust layers of an nrpm-reprogrammed model, or a plain reference model passed as ``base_model``.

The package, one module per concern:

* :mod:`~nrpm.audit.plan`: the typed :data:`CATALOGUE` of the audit's attacks (:class:`AuditAttack`: key, label,
  role, how it is built) from which the sweeps, the optional attacks and each check's groups are derived, and the
  plan of one audit (:func:`make_plan`);
* :mod:`~nrpm.audit.config`: :class:`AuditConfig`, what an audit does (data only);
* :mod:`~nrpm.audit.probes`: what checks 1 and 2 measure on the model itself;
* :mod:`~nrpm.audit.checks`: :class:`Evidence` (everything the audit measured) and the seven checks, each a
  public function ``Evidence -> CheckResult``; :class:`Tolerances`, the verdicts and the grading rules;
* :mod:`~nrpm.audit.adaptive`: the attacks aimed at NRPM (transfer, BPDA, detached IRLS weights, smoothed IRLS
  estimators) and the :func:`straight_through` / :func:`lam_one` overrides, built on :mod:`nrpm.attacks` and
  :mod:`nrpm.nn`;
* :mod:`~nrpm.audit.cells`: running one (model, attack, budget) cell, and the resumable cache of their results (a
  :class:`nrpm.runs.ResultsFile`);
* :mod:`~nrpm.audit.survivors`: which samples each attack runs on (its reference attack's survivors), and why no
  check gets weaker;
* :mod:`~nrpm.audit.runner`: :func:`run_audit` (an :class:`AuditConfig` and a :class:`nrpm.runs.RunContext`);
* :mod:`~nrpm.audit.protocol`: whether a run was the full protocol or a reduced one, and how
  (:func:`assess_protocol`, stored in audit.json and shown with every verdict);
* :mod:`~nrpm.audit.report`: :class:`AuditReport` (markdown, table, plot, files) and :func:`collate_reports`;
* :mod:`~nrpm.audit.compare`: two finished audits' worst cases on the same images, sample by sample
  (:func:`paired_difference`: the paired 95% interval and McNemar's p; ``nrpm audit-compare``).
"""

from .adaptive import SMOOTHINGS, bpda_pgd, detached_irls_pgd, lam_one, smoothed_pgd, straight_through, transfer_pgd
from .cells import CACHE_FORMAT
from .checks import (CHECKS, FAIL, PASS, SKIP, WARN, CheckResult, Evidence, Tolerances, check_autoattack,
                     check_blackbox, check_budget_curve, check_gradients, check_lam_and_determinism, check_steps,
                     check_transfer, grade, worst)
from .compare import compare_sides, load_side, paired_difference
from .config import AuditConfig
from .plan import CATALOGUE, OPTIONAL_ATTACKS, AuditAttack, catalogue, keys_with_role, make_plan, optional_keys
from .probes import ForwardProbe, GradientProbe, probe_forward, probe_gradients
from .protocol import MIN_SAMPLES, assess_protocol, wilson_half_width
from .report import AUDIT_FORMAT, AuditReport, collate_reports, curve_styles, worst_case_attacks
from .runner import run_audit

__all__ = ["Tolerances", "CheckResult", "Evidence", "CHECKS", "AuditReport", "run_audit", "straight_through",
           "lam_one", "collate_reports", "PASS", "WARN", "FAIL", "SKIP",
           "AuditConfig", "AUDIT_FORMAT", "CACHE_FORMAT", "grade", "worst", "curve_styles",
           "check_lam_and_determinism", "check_gradients", "check_budget_curve", "check_steps", "check_blackbox",
           "check_transfer", "check_autoattack", "transfer_pgd", "bpda_pgd", "detached_irls_pgd",
           "smoothed_pgd", "SMOOTHINGS", "OPTIONAL_ATTACKS", "AuditAttack", "CATALOGUE", "catalogue",
           "keys_with_role", "optional_keys", "make_plan", "ForwardProbe", "GradientProbe", "probe_forward",
           "probe_gradients", "assess_protocol", "wilson_half_width", "MIN_SAMPLES", "worst_case_attacks",
           "paired_difference", "load_side", "compare_sides"]
