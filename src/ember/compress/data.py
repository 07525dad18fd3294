"""Calibration and evaluation data: samples checked against a model's inputs, served in batches.

`load_samples` reads an .npz file, a dict of arrays or an iterable of batch dicts, checks names,
dtypes and shapes against the model's inputs once, and returns a re-iterable `SampleSet`. It never
copies the data: .npz members stored uncompressed are memory-mapped, and batches are views.
Knows nothing about quantization; `calibrate`, `measure_fidelity` and `quantize` read it.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ember.errors import ConfigError, InputError
from ember.runtime.model import TensorSpec, tensor_spec

if TYPE_CHECKING:
    from ember.runtime.model import Model

Sample = dict[str, np.ndarray]  # one batch: graph input name -> array, samples along axis 0
LABELS = "labels"  # the one array name in a data file that is not a model input
DataSource = str | os.PathLike[str] | Mapping[str, np.ndarray] | Iterable[Sample]


class SampleSet:
    """Samples for a model, validated against its inputs; iterating yields batches (`Sample`).

    Re-iterable. `len()` is the number of samples; `.labels` the class index of each sample (or
    None). Backed either by whole arrays (samples along axis 0, cut into `batch_size` views) or
    by the caller's own batches, used as given.

    >>> import numpy as np, ember
    >>> from ember.zoo import model_path
    >>> data = load_samples({"input": np.zeros((70, 784), np.float32)},
    ...                     ember.load(model_path("mnist_mlp")), batch_size=32)
    >>> len(data), [b["input"].shape[0] for b in data]
    (70, [32, 32, 6])
    """

    def __init__(
        self,
        *,
        source: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        batches: Iterable[Sample] | None = None,
        n_samples: int,
        labels: np.ndarray | None,
        batch_size: int,
        start: int = 0,
    ) -> None:
        if (arrays is None) == (batches is None):
            raise ValueError("SampleSet takes either arrays or batches")
        self.source = source  # for messages: "calibration data 'calib.npz'"
        self._arrays = arrays
        self._batches = batches
        self._start = start  # first sample of the underlying data this set covers
        self._n = n_samples
        self.labels = labels  # (N,) int class indices, or None
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Sample]:
        stop = self._start + self._n
        if self._arrays is not None:
            for lo in range(self._start, stop, self.batch_size):
                hi = min(lo + self.batch_size, stop)
                yield {name: a[lo:hi] for name, a in self._arrays.items()}
            return
        assert self._batches is not None
        offset = 0  # sample index of the current batch's first row in the caller's stream
        for batch in self._batches:
            n = _batch_len(batch)
            lo, hi = max(self._start - offset, 0), min(stop - offset, n)
            if lo < hi:
                yield batch if (lo, hi) == (0, n) else {k: v[lo:hi] for k, v in batch.items()}
            offset += n
            if offset >= stop:
                return

    @property
    def n_batches(self) -> int:
        if self._arrays is not None:
            return -(-self._n // self.batch_size)
        return sum(1 for _ in self)

    def select(self, start: int, stop: int) -> SampleSet:
        """Samples [start, stop) of this set, as a new SampleSet over the same data (no copy).

        >>> import numpy as np, ember
        >>> from ember.zoo import model_path
        >>> data = load_samples({"input": np.zeros((10, 784), np.float32)},
        ...                     ember.load(model_path("mnist_mlp")))
        >>> len(data.select(2, 5)), len(data.select(8, 100))
        (3, 2)
        """
        start, stop = max(0, min(start, self._n)), max(0, min(stop, self._n))
        stop = max(start, stop)
        return SampleSet(
            source=self.source,
            arrays=self._arrays,
            batches=self._batches,
            n_samples=stop - start,
            labels=None if self.labels is None else self.labels[start:stop],
            batch_size=self.batch_size,
            start=self._start + start,
        )

    def __repr__(self) -> str:
        labels = ", labeled" if self.labels is not None else ""
        return f"<SampleSet {self.source}: {self._n} samples{labels}>"


def load_samples(
    src: DataSource | SampleSet,
    model: ir.Model | Model,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    what: str = "calibration",
) -> SampleSet:
    """Samples for `model` from an .npz file, a dict of arrays or an iterable of batch dicts.

    An .npz file or a dict holds one array per model input, named after it, with the samples
    along axis 0, and optionally `labels` (N,) integer class indices. An iterable yields batch
    dicts (input name -> array, optionally `labels`); each is used as given, so `batch_size` does
    not apply to it. `limit` caps the number of samples. Names, dtypes, ranks and static dims are
    checked here, so a mismatch fails before any work, with an InputError that says where.

    >>> import numpy as np, ember
    >>> from ember.zoo import model_path
    >>> load_samples({"input": np.zeros((5, 784), np.float64)}, ember.load(model_path("mnist_mlp")))
    Traceback (most recent call last):
    ...
    ember.errors.InputError: calibration data (a dict of arrays): array 'input' is float64, ...
    """
    if type(batch_size) is not int or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ConfigError(f"limit must be None or an int >= 1, got {limit!r}")
    signature = _Signature.of(model)
    if isinstance(src, SampleSet):
        data = src
    elif isinstance(src, str | os.PathLike):
        path = Path(src)
        data = _from_arrays(
            _read_npz(path, what), signature, f"{what} data {str(path)!r}", batch_size
        )
    elif isinstance(src, Mapping):
        data = _from_arrays(dict(src), signature, f"{what} data (a dict of arrays)", batch_size)
    elif isinstance(src, Iterable) and not isinstance(src, bytes | np.ndarray):
        data = _from_batches(src, signature, f"{what} data (an iterable of batches)", batch_size)
    else:
        raise InputError(
            f"{what} data: cannot read samples from {type(src).__name__}; pass an .npz path, a "
            "dict of input name -> array, or an iterable of such dicts (one per batch)"
        )
    if limit is not None and limit < len(data):
        data = data.select(0, limit)
    if len(data) == 0:
        raise InputError(
            f"{data.source}: no samples (an empty {what} set); give at least one sample per input"
        )
    return data


class _Signature:
    """The inputs a sample must supply (`required`) or may (`optional`: initializer defaults)."""

    def __init__(self, specs: list[TensorSpec], optional: set[str]) -> None:
        self.specs = {s.name: s for s in specs}
        self.optional = optional

    @classmethod
    def of(cls, model: ir.Model | Model) -> _Signature:
        graph = model.graph if isinstance(model, ir.Model) else model.ir.graph
        if isinstance(model, ir.Model):
            specs = [tensor_spec(v) for v in graph.inputs]
        else:
            specs = list(model.inputs)
        return cls(specs, {name for name in graph.initializers if name in {s.name for s in specs}})

    def describe(self) -> str:
        return ", ".join(map(str, self.specs.values()))


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file: memory-mapped when stored uncompressed (np.savez), else read."""
    where = f"{what} data {str(path)!r}"
    if not path.exists():
        raise InputError(f"{where}: no such file")
    if path.is_dir():
        raise InputError(f"{where}: is a directory; give an .npz file (np.savez)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(
            f"{where}: not an .npz file ({e}); save the samples with np.savez(path, name=array)"
        ) from None
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            try:
                arrays[name] = _mmap_member(path, archive, info)
            except ValueError as e:
                raise InputError(f"{where}: array {name!r} cannot be read ({e})") from None
    return arrays


def _mmap_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ValueError("it holds Python objects; save numeric arrays")
        header_len = f.tell()
        if info.compress_type != zipfile.ZIP_STORED:  # np.savez_compressed: read it whole
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    # NOTE: the member's data starts after its local file header, whose extra field may differ
    # in length from the central directory's copy, so it is read from the file itself.
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + 30 + name_len + extra_len + header_len
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)  # np.memmap cannot map zero bytes
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def _batch_len(batch: Mapping[str, np.ndarray]) -> int:
    first = next(iter(batch.values()))
    return int(first.shape[0]) if first.ndim else 1


def _check_labels(labels: Any, n: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise InputError(
            f"{where}: `labels` must be a 1-D integer array of class indices, got "
            f"{labels.dtype}{list(labels.shape)}; save labels.astype(np.int64) of shape (N,)"
        )
    if len(labels) != n:
        raise InputError(
            f"{where}: {len(labels)} labels for {n} samples; give one label per sample"
        )
    return labels


def _check_names(names: Iterable[str], signature: _Signature, where: str) -> None:
    names = set(names)
    missing = [
        name for name in signature.specs if name not in names and name not in signature.optional
    ]
    for name in sorted(names - set(signature.specs) - {LABELS}):
        fix = (
            f"rename it to the missing input {', '.join(map(repr, missing))}"
            if missing
            else "rename or drop it"
        )
        raise InputError(
            f"{where}: array {name!r} is not an input of the model; the model takes "
            f"{signature.describe()} (and an optional {LABELS!r} array); {fix}"
        )
    for name in missing:
        given = ", ".join(sorted(names)) or "none"
        raise InputError(
            f"{where}: missing input {name!r} (expected {signature.specs[name]}); the data has "
            f"arrays: {given}; add an array named {name!r}"
        )


def _check_array(
    name: str, array: Any, spec: TensorSpec, where: str, *, stacked: bool
) -> np.ndarray:
    """Check one array against its input; `stacked`: axis 0 counts samples (not model batch)."""
    if not isinstance(array, np.ndarray):
        raise InputError(
            f"{where}: {name!r} is a {type(array).__name__}, expected a NumPy array ({spec})"
        )
    if (
        spec.dtype is not None
        and array.dtype != spec.dtype
        and not (spec.dtype.kind in "OUS" and array.dtype.kind in "OUS")
    ):
        raise InputError(
            f"{where}: array {name!r} is {array.dtype}, but the model's input {name!r} is "
            f"{spec.dtype} ({spec}); convert it with .astype(np.{spec.dtype})"
        )
    if spec.shape is None:
        return array
    if array.ndim != len(spec.shape):
        hint = " (samples go along axis 0, one row per sample)" if stacked else ""
        raise InputError(
            f"{where}: array {name!r} has rank {array.ndim} (shape {list(array.shape)}), but the "
            f"model's input {name!r} has rank {len(spec.shape)} ({spec}){hint}"
        )
    first = 1 if stacked else 0
    for axis in range(first, array.ndim):
        want = spec.shape[axis]
        if isinstance(want, int) and want != array.shape[axis]:
            raise InputError(
                f"{where}: array {name!r} has shape {list(array.shape)}, but the model's input "
                f"{spec} needs axis {axis} = {want}, got {array.shape[axis]}"
            )
    return array


def _from_arrays(
    arrays: dict[str, Any], signature: _Signature, where: str, batch_size: int
) -> SampleSet:
    _check_names(arrays, signature, where)
    inputs = {
        name: _check_array(name, a, signature.specs[name], where, stacked=True)
        for name, a in arrays.items()
        if name != LABELS
    }
    counts = {name: int(a.shape[0]) for name, a in inputs.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise InputError(
            f"{where}: the arrays hold different numbers of samples along axis 0 ({listed}); "
            "every input needs one row per sample"
        )
    n = next(iter(counts.values()), 0)
    labels = _check_labels(arrays[LABELS], n, where) if LABELS in arrays else None
    # A model with a fixed batch axis (e.g. [1, 3, 224, 224]) reads exactly that many samples per
    # run; samples past the last whole batch are left out.
    fixed: set[int] = set()
    for name in inputs:
        shape = signature.specs[name].shape
        if shape and isinstance(shape[0], int):
            fixed.add(shape[0])
    if len(fixed) > 1:
        raise InputError(f"{where}: the model's inputs fix different batch sizes {sorted(fixed)}")
    if fixed:
        batch_size = fixed.pop()
        n -= n % batch_size
        if labels is not None:
            labels = labels[:n]
    return SampleSet(source=where, arrays=inputs, n_samples=n, labels=labels, batch_size=batch_size)


def _from_batches(
    batches: Iterable[Any], signature: _Signature, where: str, batch_size: int
) -> SampleSet:
    if iter(batches) is batches:
        batches = list(batches)  # a one-shot iterator: keep its batches so the set re-iterates
    n = 0
    labels: list[np.ndarray] = []
    for i, batch in enumerate(batches):
        here = f"{where}, batch {i}"
        if not isinstance(batch, Mapping):
            raise InputError(
                f"{here}: expected a dict of input name -> array, got {type(batch).__name__}"
            )
        _check_names(batch, signature, here)
        sizes = set()
        for name, a in batch.items():
            if name != LABELS:
                _check_array(name, a, signature.specs[name], here, stacked=False)
                sizes.add(_batch_len({name: a}))
        if len(sizes) > 1:
            raise InputError(
                f"{here}: the arrays disagree on the batch size (axis 0): {sorted(sizes)}"
            )
        size = sizes.pop() if sizes else 0
        if i > 0 and (LABELS in batch) != bool(labels):
            raise InputError(
                f"{here}: some batches have `labels` and some do not; label all or none"
            )
        if LABELS in batch:
            labels.append(_check_labels(batch[LABELS], size, here))
        n += size
    # Batches are yielded without `labels`: the model's inputs only.
    inputs_only = _WithoutLabels(batches) if labels else batches
    return SampleSet(
        source=where,
        batches=inputs_only,
        n_samples=n,
        labels=np.concatenate(labels) if labels else None,
        batch_size=batch_size,
    )


class _WithoutLabels:
    """Re-iterable view of batch dicts with their `labels` entry left out."""

    def __init__(self, batches: Iterable[Sample]) -> None:
        self._batches = batches

    def __iter__(self) -> Iterator[Sample]:
        for batch in self._batches:
            yield {k: v for k, v in batch.items() if k != LABELS}
