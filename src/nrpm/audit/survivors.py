"""Which samples each attack of the audit runs on: every sample the model classifies correctly, or only the
samples a *reference* attack left standing at the same budget.

The audit's worst case counts a sample only if no attack broke it, so a sample an attack A already broke is broken
whatever another attack B does on it; B need only run on A's survivors. Such a cell's mask is ``A and B`` per
sample (the samples B did not run on count as broken: A broke them), so its accuracy is that of "A, then B on what
A left", never above A's or B's own. Every accuracy of the table keeps one meaning: the fraction of samples still
correctly classified after that cell's attack(s); the cell's ``ran_on`` field and the report's notes say which.

Why no check gets weaker (checks 1-2 read no attack; the rest compare accuracies, :mod:`~nrpm.audit.checks`):

* **black-box** (Square, SPSA; check 5: "black-box not stronger than white-box") run on the survivors of the
  *strongest single* white-box attack W at that budget, the one check 5 compares with (``min`` over white-box
  accuracies). Its lead becomes ``|W| - |W and B| = |W \\ B|``: the samples B breaks that W left. That is at least
  the old lead ``|W| - |B|`` (since ``|B| >= |W and B|``), so the check can only be stricter, and it is exactly
  "B breaks samples W did not". Not the survivors of *all* white-box attacks: that reference is stronger than W,
  and a B that matches the ensemble but beats every single attack would pass where it failed before.
* **adaptive** (transfer, BPDA, detached, smoothed IRLS; check 6: "not stronger than direct PGD") run on PGD's
  survivors: the lead ``|PGD| - |PGD and B| = |PGD \\ B| >= |PGD| - |B|``, stricter or equal, for the same reason.
* **step variants** (check 4) ran on PGD's survivors before this module, with the same ``min`` reading.
* **AutoAttack** (check 7) runs on every clean-correct sample, last: on the survivors of the strongest other cell
  the fail band ("AA much stronger") would hold, but the warning "AA much weaker than the others" needs AA's result
  on the samples the others broke, and could never fire. So AutoAttack gains only PGD's early stopping.
* **check 3** (no attack's accuracy rises with the budget) reads a survivors cell's curve, the curve of
  "A, then B": a rise of B alone on samples A breaks at the larger budget is not seen. Such a rise changes no
  reported number (the worst case, the other checks); A's own curve is still checked in full. B's standalone curve
  is in ``--every-sample`` runs.
* **white-box attacks and random noise** run on every clean-correct sample: they are the references above (and
  check 5 compares noise, which costs one forward pass, with them as before).

The worst case is unchanged: ``A and (A and B) = A and B`` per sample. Each sample's result of an attack seeded per
sample (PGD and its variants, SPSA, noise) does not depend on the other samples in its batch, so its masks are
those of the full run; pyautoattack's APGD / Square / AutoAttack draw from one generator per batch, so their
per-sample draws change with the batch (as they already did with ``--batch-size``).
"""

from __future__ import annotations

import torch

from ..reports import format_budget
from .plan import (ADAPTIVE, AUTOATTACK, BLACK_BOX, DIRECT_PGD, NOISE, STEP_VARIANT, UNBOUNDED, WHITE_BOX, attack,
                   keys_with_role)

__all__ = ["CLEAN", "RUN_ORDER", "AA_NOT_COMPARED", "reference", "candidates", "run_order",
           "survivor_notes"]

#: what a cell that ran on every clean-correct sample records as ``ran_on`` (:class:`~nrpm.audit.cells.CellRunner`)
CLEAN = "clean-correct"
#: the order the roles of a sweep run in: the references before the attacks that run on their survivors
RUN_ORDER = {WHITE_BOX: 0, NOISE: 0, BLACK_BOX: 1, ADAPTIVE: 1, AUTOATTACK: 2}
#: the cells check 7 does not compare AutoAttack with (itself, the noise baseline, check 3 / 4's extra PGD runs)
AA_NOT_COMPARED = (AUTOATTACK, NOISE, UNBOUNDED, STEP_VARIANT)


def run_order(keys) -> list[str]:
    """``keys`` with every reference before the attacks that need its survivors (stable: catalogue order kept)."""
    return sorted(keys, key=lambda k: RUN_ORDER.get(attack(k).role, 0))


def _strongest(masks: dict, tag: str, keys, budget: float) -> str | None:
    """The key of the lowest-accuracy cell of ``keys`` at ``budget`` (ties: the first in catalogue order)."""
    ran = [k for k in keys if (tag, k, round(budget, 10)) in masks]
    return min(ran, key=lambda k: int(masks[(tag, k, round(budget, 10))].sum()), default=None)


def reference(role: str, masks: dict, tag: str, budget: float) -> str | None:
    """The attack whose survivors an attack of ``role`` runs on at ``budget`` (None: every clean-correct sample)."""
    if role == BLACK_BOX:
        return _strongest(masks, tag, keys_with_role(WHITE_BOX), budget)
    if role == ADAPTIVE:
        return DIRECT_PGD if (tag, DIRECT_PGD, round(budget, 10)) in masks else None
    # AutoAttack runs on every clean-correct sample: check 7 also warns when it is much WEAKER than the others,
    # which needs its result on the samples they broke (on survivors that warning could never fire)
    return None


def candidates(key: str, masks: dict, tag: str, budget: float, clean: torch.Tensor) -> tuple[str | None, torch.Tensor]:
    """(reference key or None, the samples attack ``key`` runs on at ``budget``): the reference's survivors."""
    ref = reference(attack(key).role, masks, tag, budget)
    return (None, clean) if ref is None else (ref, clean & masks[(tag, ref, round(budget, 10))])


def survivor_notes(cells: list[dict], labels: dict[str, str], unit: float = 1.0) -> list[str]:
    """One note per (model, attack) that ran on survivors: which attack's, at each budget (in ``unit``: 8/255),
    and what its accuracy means."""
    on: dict[tuple[str, str], list[str]] = {}
    for cell in cells:
        if cell.get("ran_on", CLEAN) != CLEAN and not cell.get("extra"):
            on.setdefault((cell["model"], cell["label"]), []).append(
                f"{cell['ran_on'].removeprefix('survivors of ')} at {format_budget(cell['budget'], unit)}")
    return [f"{labels.get(tag, tag)}: {label} ran only on the samples the other attack left ({', '.join(refs)}); "
            f"the samples it did not run on count as broken, so its accuracy is that of both attacks together"
            for (tag, label), refs in on.items()]
