# Type stub for the native extension built from src/ember/kernels/cpu/csrc/bindings.cpp.
from collections.abc import Sequence

import numpy as np

BufferRef = tuple[int, Sequence[int]]  # a Program buffer: (number, shape)

def cpu_info() -> dict[str, bool]: ...
def bias_relu_isa() -> str: ...
def bias_relu(x: np.ndarray, bias: np.ndarray | None, y: np.ndarray) -> None: ...

# --- math ---
def set_math_isa(name: str) -> None: ...
def math_isa() -> str: ...
def softmax(x: np.ndarray, out: np.ndarray) -> None: ...
def layer_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    epsilon: float,
    out: np.ndarray,
    residual: np.ndarray | None = None,
    sum: np.ndarray | None = None,
) -> None: ...
def gelu(
    x: np.ndarray, bias: np.ndarray | None, out: np.ndarray, approximate: str = "none"
) -> None: ...
def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    num_heads: int,
    scale: float,
    out: np.ndarray,
) -> None: ...

# --- dnnl ---
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def bf16_native() -> bool: ...

class Conv:
    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        strides: list[int],
        pads: list[int],
        dilations: list[int],
        group: int,
        channels_last: bool,
        activation: str,
        activation_params: list[float],
        bf16: bool,
    ) -> None: ...
    def __call__(
        self, x: np.ndarray, z: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray: ...
    def step(self, x: BufferRef, z: BufferRef | None, out: BufferRef) -> ProgramStep: ...
    def implementations(self) -> list[str]: ...

class MatMul:
    def __init__(
        self,
        b: np.ndarray,
        bias: np.ndarray | None,
        trans_b: bool,
        activation: str,
        activation_params: list[float],
        alpha: float,
        bf16: bool,
    ) -> None: ...
    def __call__(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
    def step(self, a: BufferRef, out: BufferRef) -> ProgramStep: ...
    def implementations(self) -> list[str]: ...

def matmul(
    a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, alpha: float = 1.0
) -> np.ndarray: ...
def pool(
    x: np.ndarray,
    kind: int,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    channels_last: bool,
    out: np.ndarray | None = None,
) -> np.ndarray: ...
def to_channels_last(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def to_channels_first(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def pool_step(
    x: BufferRef,
    kind: int,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    channels_last: bool,
    out: BufferRef,
) -> ProgramStep: ...
def relayout_step(x: BufferRef, out: BufferRef, to_channels_last: bool) -> ProgramStep: ...

# --- program (csrc/program.h) ---
class ProgramStep: ...

class Program:
    def __init__(
        self,
        steps: Sequence[ProgramStep],
        buffers: Sequence[tuple[int, int, Sequence[int]]],
        arena_bytes: int,
    ) -> None: ...
    def run(
        self, inputs: Sequence[np.ndarray], arena: np.ndarray, outputs: Sequence[np.ndarray]
    ) -> bool: ...
    def __len__(self) -> int: ...

# --- int8 (dnnl_int8.cpp) ---
class QConv:
    def __init__(
        self,
        weight: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        x_scale: float,
        x_zero_point: int,
        x_dtype: str,
        y_dtype: str,
        y_scale: float,
        y_zero_point: int,
        has_z: bool,
        z_scale: float,
        z_zero_point: int,
        strides: list[int],
        pads: list[int],
        dilations: list[int],
        group: int,
        channels_last: bool,
        activation: str,
        activation_params: list[float],
        requantize: list[float],
    ) -> None: ...
    def __call__(
        self, x: np.ndarray, z: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray: ...
    def implementations(self) -> list[str]: ...

class QMatMul:
    def __init__(
        self,
        b: np.ndarray,
        b_scale: np.ndarray,
        bias: np.ndarray | None,
        trans_b: bool,
        dynamic: bool,
        a_scale: float,
        a_zero_point: int,
        a_dtype: str,
        y_dtype: str,
        y_scale: float,
        y_zero_point: int,
        activation: str,
        activation_params: list[float],
    ) -> None: ...
    def __call__(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
    def implementations(self) -> list[str]: ...

def quantize(
    x: np.ndarray,
    scale: float,
    zero_point: int,
    dtype: str,
    channels_last: bool,
    out: np.ndarray | None = None,
) -> np.ndarray: ...
def dequantize(
    x: np.ndarray, scale: float, zero_point: int, channels_last: bool, out: np.ndarray | None = None
) -> np.ndarray: ...
def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, float, int]: ...
def max_pool_int8(
    x: np.ndarray,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    channels_last: bool,
    out: np.ndarray | None = None,
) -> np.ndarray: ...

# sparse.cpp: matmul with a constant sparse B (ember.kernels.cpu.sparse)
class SparseMatMul:
    def __init__(
        self,
        b: np.ndarray,
        bias: np.ndarray | None,
        trans_b: bool,
        activation: str,
        activation_params: list[float],
        alpha: float,
    ) -> None: ...
    def __call__(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
    def step(self, a: BufferRef, out: BufferRef) -> ProgramStep: ...
    @property
    def nnz(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def n(self) -> int: ...

def set_sparse_isa(name: str) -> None: ...
def sparse_isa() -> str: ...
