"""LiRA, offline variant (Carlini et al., 2022): a per-example likelihood-ratio test against reference models that
did not train on the example.

For each sample, the logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` under the reference models trained
without it (OUT models) is modelled as a Gaussian; the score is how far the audited model's ``phi`` lies above it,
``(phi - mu_out) / sigma_out``. With few reference models the variance is pooled over all samples
(``global_variance``, as the paper recommends below ~64 models). Needs ``--audit.reference_models K``.
"""

from __future__ import annotations

import torch

from medforget.audit.classifier.mia.base import AttackData, MembershipAttack, reference_out_values, true_class_logit


class LiRAAttack(MembershipAttack):
    """Offline LiRA with OUT reference models.

    Args:
        global_variance: Pool the OUT variance over all samples (robust with few reference models); otherwise a
            per-sample standard deviation, refused unless every sample has at least 2 OUT models (with one, its
            standard deviation is 0 and the score infinite): ``--audit.lira_variance per_sample`` needs
            ``--audit.reference_models`` >= 4 (each retain sample is OUT for ``K - K // 2`` models).
    """

    opt_in = True

    def __init__(self, global_variance: bool = True) -> None:
        self.global_variance = global_variance

    def scores(self, data: AttackData) -> dict[str, torch.Tensor]:
        phis = {part: torch.stack(reference_out_values(data, true_class_logit, part)) for part in data.target}
        means = {part: v.nanmean(0) for part, v in phis.items()}
        if any(bool(m.isnan().any()) for m in means.values()):
            raise ValueError("LiRA: some samples have no OUT reference model; use at least 2 reference models")
        if self.global_variance:
            residuals = torch.cat([(v - means[p]).flatten() for p, v in phis.items()])
            sd = residuals[~residuals.isnan()].std()
            sds = {p: torch.full_like(m, float(sd)) for p, m in means.items()}
        else:
            fewest = min(int((~v.isnan()).sum(0).min()) for v in phis.values())
            if fewest < 2:
                raise ValueError(f"LiRA per-sample variance needs at least 2 OUT reference models for every sample; "
                                 f"some have {fewest}: use --audit.reference_models >= 4 or "
                                 f"--audit.lira_variance pooled")
            sds = {}
            for p, v in phis.items():
                n = (~v.isnan()).sum(0)
                var = ((v - means[p]) ** 2).nansum(0) / (n - 1).clamp_min(1)
                sds[p] = var.sqrt()
        out = {}
        for part, (logits, labels) in data.target.items():
            phi = true_class_logit(logits, labels)
            out[part] = (phi - means[part]) / sds[part].clamp_min(1e-6)
        return out
