"""How far a compressed model's outputs are from the original's, measured on held-out samples.

`measure_fidelity` runs both models batch by batch and keeps running sums only (never every
output). It knows nothing about how the candidate was made.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from ember.errors import InputError, ModelError

if TYPE_CHECKING:
    from ember.compress.data import SampleSet
    from ember.runtime.model import Model


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """A candidate model against its reference on `samples` held-out samples.

    top1_agreement: fraction of samples whose argmax of the first output matches the reference's
    (None unless the first output is (batch, classes) scores). max_abs_error: over every element
    of every output. cosine: mean over samples of the cosine similarity of each sample's first
    output (flattened); cosine_min the smallest. accuracy / reference_accuracy: with labels only.
    Padding is left out: where the samples have an `attention_mask` input (B, T), positions it
    marks 0 are zeroed in every output of rank 3 or more that starts with (B, T) before comparing
    (a transformer's hidden states at padding mean nothing).

    >>> f = Fidelity(samples=100, top1_agreement=0.99, max_abs_error=0.2, cosine=0.999,
    ...              accuracy=0.95, reference_accuracy=0.96)
    >>> round(f.accuracy_drop, 4), f.drop_measure, round(f.drop, 4)
    (0.01, 'accuracy drop', 0.01)
    """

    samples: int
    top1_agreement: float | None
    max_abs_error: float
    cosine: float
    accuracy: float | None
    reference_accuracy: float | None
    cosine_min: float = math.nan

    @property
    def accuracy_drop(self) -> float | None:
        """Reference accuracy minus the candidate's (positive: the candidate is worse)."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy

    @property
    def drop_measure(self) -> str:
        """What `drop` measures: the accuracy drop with labels, else top-1 disagreement, else
        1 - cosine (the first that these samples allow)."""
        if self.accuracy_drop is not None:
            return "accuracy drop"
        if self.top1_agreement is not None:
            return "top-1 disagreement"
        return "1 - cosine"

    @property
    def drop(self) -> float:
        """The one number a `max_drop` budget is compared with (see `drop_measure`)."""
        if self.accuracy_drop is not None:
            return self.accuracy_drop
        if self.top1_agreement is not None:
            return 1.0 - self.top1_agreement
        return 1.0 - self.cosine

    def format(self, title: str = "fidelity against fp32") -> str:
        """A small table for the terminal.

        >>> print(Fidelity(10, 1.0, 0.01, 0.9999, None, None, 0.9998).format())
        fidelity against fp32 on 10 held-out samples
          top-1 agreement   100.00%
          cosine            0.999900 (min 0.999800)
          max abs error     0.01
        """
        rows = [f"{title} on {self.samples} held-out samples"]
        if self.top1_agreement is not None:
            rows.append(f"  top-1 agreement   {self.top1_agreement:.2%}")
        cos_min = "" if math.isnan(self.cosine_min) else f" (min {self.cosine_min:.6f})"
        rows.append(f"  cosine            {self.cosine:.6f}{cos_min}")
        rows.append(f"  max abs error     {self.max_abs_error:.4g}")
        if self.accuracy is not None and self.reference_accuracy is not None:
            drop = self.reference_accuracy - self.accuracy
            rows.append(
                f"  accuracy          {self.accuracy:.2%} (fp32 {self.reference_accuracy:.2%}, "
                f"drop {drop * 100:.2f} points)"
            )
        return "\n".join(rows)


#: the input that marks real tokens (1) and padding (0) in transformer models (Hugging Face's name)
ATTENTION_MASK = "attention_mask"


def _is_class_scores(output: np.ndarray) -> bool:
    # The same rule as `ember bench`'s task detection: (batch, classes) floats with classes >= 2.
    return output.ndim == 2 and output.shape[1] >= 2 and output.dtype.kind == "f"


def measure_fidelity(reference: Model, candidate: Model, data: SampleSet) -> Fidelity:
    """Run both models over `data` and compare the candidate's outputs with the reference's.

    >>> import ember
    >>> from ember import zoo
    >>> from ember.compress.data import load_samples
    >>> m = ember.load(zoo.model_path("digits_cnn"))
    >>> ev = zoo.load_eval("digits_cnn")
    >>> data = load_samples({"input": ev.x, "labels": ev.y}, m, what="eval")
    >>> f = measure_fidelity(m, m, data)
    >>> f.top1_agreement, f.max_abs_error, f.accuracy_drop
    (1.0, 0.0, 0.0)
    """
    names = [o.name for o in reference.outputs]
    if [o.name for o in candidate.outputs] != names:
        raise ModelError(
            f"the candidate's outputs {[o.name for o in candidate.outputs]} are not the "
            f"reference's {names}; compare models with the same outputs"
        )
    n = 0
    agree = 0  # samples whose argmax matches the reference's
    correct = correct_ref = 0  # samples whose argmax is the label
    cos_sum, cos_min, max_abs = 0.0, math.inf, 0.0
    classify: bool | None = None  # decided by the first batch's first output
    labels = data.labels
    for batch in data:
        ref = reference.run(batch)
        got = candidate.run(batch)
        mask = batch.get(ATTENTION_MASK)
        for name in names:
            r, g = np.asarray(ref[name]), np.asarray(got[name])
            if r.shape != g.shape:
                raise ModelError(
                    f"output {name!r}: the candidate gives shape {list(g.shape)}, the reference "
                    f"{list(r.shape)}"
                )
            # (B, T, C...) outputs only: a (B, C) output is never masked, even when C == T.
            if mask is not None and mask.ndim == 2 and r.ndim > 2 and r.shape[:2] == mask.shape:
                keep = (mask != 0).reshape(*mask.shape, *[1] * (r.ndim - 2))  # (B, T, 1...)
                r = np.where(keep, r, np.zeros((), r.dtype))
                g = np.where(keep, g, np.zeros((), g.dtype))
                ref[name], got[name] = r, g
            if r.size and r.dtype.kind in "fiub":
                err = np.abs(g.astype(np.float64) - r.astype(np.float64))
                max_abs = max(max_abs, float(np.nan_to_num(err, nan=np.inf).max()))
        r0 = np.asarray(ref[names[0]], np.float64)
        g0 = np.asarray(got[names[0]], np.float64)
        B = r0.shape[0] if r0.ndim else 1
        if classify is None:
            classify = _is_class_scores(np.asarray(ref[names[0]]))
            if labels is not None and not classify:
                raise InputError(
                    f"{data.source}: has labels, but the model's first output {names[0]!r} is "
                    f"{list(r0.shape)}, not (batch, classes) scores, so accuracy cannot be "
                    "measured; drop the labels"
                )
        r2, g2 = r0.reshape(B, -1), g0.reshape(B, -1)  # (B, D)
        norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(g2, axis=1)  # (B,)
        # Two all-zero outputs agree perfectly; one zero against a nonzero one not at all.
        both_zero = (np.linalg.norm(r2, axis=1) == 0) & (np.linalg.norm(g2, axis=1) == 0)
        cos = np.where(norms > 0, (r2 * g2).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
        cos = np.where(both_zero, 1.0, cos)
        cos_sum += float(cos.sum())
        cos_min = min(cos_min, float(cos.min()))
        if classify:
            top_ref, top_got = r0.argmax(axis=1), g0.argmax(axis=1)  # (B,)
            agree += int((top_ref == top_got).sum())
            if labels is not None:
                y = labels[n : n + B]
                correct += int((top_got == y).sum())
                correct_ref += int((top_ref == y).sum())
        n += B
    if n == 0:
        raise InputError(f"{data.source}: no samples to measure fidelity on")
    return Fidelity(
        samples=n,
        top1_agreement=agree / n if classify else None,
        max_abs_error=max_abs,
        cosine=cos_sum / n,
        accuracy=correct / n if classify and labels is not None else None,
        reference_accuracy=correct_ref / n if classify and labels is not None else None,
        cosine_min=cos_min,
    )
