"""Tests for ``matching``: pairing tensors of a float model with its fp16, QDQ and QLinearConv
forms (made by onnxconverter-common and onnxruntime.quantization), and what stays unmatched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_featviz.graph import matching as matching
from onnx_featviz.graph.matching import TensorPair, Unmatched
from tests import graphs


@pytest.fixture(scope="module")
def float_cnn() -> onnx.ModelProto:
    return graphs.small_cnn()


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).random((8, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def qdq_cnn(float_cnn: onnx.ModelProto, calib: np.ndarray) -> onnx.ModelProto:
    return graphs.qdq_model(float_cnn, calib)


@pytest.fixture(scope="module")
def qop_cnn(float_cnn: onnx.ModelProto, calib: np.ndarray) -> onnx.ModelProto:
    return graphs.qoperator_model(float_cnn, calib)


def replaced_initializer(model: onnx.ModelProto, name: str, array: np.ndarray
                         ) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name == name:
            out.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, name))
    return out


def with_extra_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """small_cnn with a 1x1 Conv "conv_extra" (8 -> 8, identity weights) between relu2 and gap.

    ... -> Relu "relu2" -> r2 -> Conv "conv_extra" [eye] -> r2x -> GlobalAveragePool "gap" -> g
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    eye = np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1)
    out.graph.initializer.append(numpy_helper.from_array(eye, "w_extra"))
    nodes = list(out.graph.node)
    index = next(i for i, n in enumerate(nodes) if n.name == "gap")
    nodes[index].input[0] = "r2x"
    nodes.insert(index, helper.make_node("Conv", ["r2", "w_extra"], ["r2x"], name="conv_extra"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def test_same_model_pairs_every_conv_by_name(float_cnn: onnx.ModelProto) -> None:
    before = float_cnn.SerializeToString()
    found = matching.match_models(float_cnn, float_cnn)
    assert found.pairs == (TensorPair("c1", "c1", "conv1", "name"),
                           TensorPair("c2", "c2", "conv2", "name"))
    assert found.outputs == (TensorPair("logits", "logits", "fc", "name"),)
    assert found.unmatched == ()
    assert float_cnn.SerializeToString() == before


def test_qdq_conv_pairs_with_dequantize_output(float_cnn: onnx.ModelProto,
                                               qdq_cnn: onnx.ModelProto) -> None:
    """quantize_static drops the Relu after each conv (the uint8 range clamps at 0) and names
    the Conv output after the Relu's; A's activation pairs with the DequantizeLinear output."""
    conv1 = next(n for n in qdq_cnn.graph.node if n.name == "conv1")
    assert conv1.op_type == "Conv" and conv1.output[0] == "r1"
    before = (float_cnn.SerializeToString(), qdq_cnn.SerializeToString())
    found = matching.match_models(float_cnn, qdq_cnn)
    assert [(p.a, p.b, p.layer, p.how) for p in found.pairs] == [
        ("r1", "r1_DequantizeLinear_Output", "conv1", "qdq"),
        ("r2", "r2_DequantizeLinear_Output", "conv2", "qdq")]
    assert "Relu" in found.pairs[0].note
    assert found.unmatched == ()
    assert (float_cnn.SerializeToString(), qdq_cnn.SerializeToString()) == before


def test_qdq_tensor_selection_reports_fused_pre_activation(float_cnn: onnx.ModelProto,
                                                           qdq_cnn: onnx.ModelProto) -> None:
    found = matching.match_models(float_cnn, qdq_cnn, conv_layers=(),
                                  tensors=["c1", "r1", "p1", "g"])
    assert [(p.a, p.b, p.how) for p in found.pairs] == [
        ("r1", "r1_DequantizeLinear_Output", "qdq"),
        ("p1", "p1_DequantizeLinear_Output", "qdq"),
        ("g", "g_DequantizeLinear_Output", "qdq")]
    assert len(found.unmatched) == 1
    missing = found.unmatched[0]
    assert (missing.model, missing.tensor, missing.layer) == ("a", "c1", "conv1")
    assert "fuses the Relu after conv 'conv1'" in missing.reason
    assert "compare the activation 'r1' instead" in missing.reason
    found = matching.match_models(float_cnn, qdq_cnn, conv_layers=(), tensors=["logits"])
    assert [p.b for p in found.pairs] == ["logits"]


def test_fused_activation_after_gemm_is_explained() -> None:
    """x -> Gemm "fc" -> h -> Relu "act" -> y  vs  x -> Gemm "fc" -> y (Relu fused)."""
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    plain = graphs.make(helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Relu", ["h"], ["y"], name="act")], "plain", [x], [y], [w]))
    fused = graphs.make(helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "fused", [x], [y], [w]))
    found = matching.match_models(plain, fused, conv_layers=(), tensors=["h", "y"])
    assert found.pairs == (TensorPair("y", "y", "act", "name"),)
    assert found.unmatched == (Unmatched(
        "a", "h", "fc", "model B fuses the Relu after 'fc' into its Gemm 'fc', so B has no "
        "pre-activation tensor; compare the activation 'y' instead"),)


def test_qdq_without_fused_activation_pairs_conv_output() -> None:
    """A Q/DQ pair right after the conv, Relu kept: conv output c <-> DequantizeLinear cd."""
    found = matching.match_models(graphs.conv_relu(), graphs.qdq_conv_relu(),
                                  conv_layers=None, tensors=["y"])
    assert found.pairs == (TensorPair("c", "cd", "conv", "qdq"),
                           TensorPair("y", "y", "relu", "name"))
    assert found.unmatched == ()


def test_qlinear_conv_pairs_with_int8_output(float_cnn: onnx.ModelProto,
                                             qop_cnn: onnx.ModelProto) -> None:
    assert {n.op_type for n in qop_cnn.graph.node} >= {"QLinearConv"}
    found = matching.match_models(float_cnn, qop_cnn)
    assert [(p.a, p.b, p.layer, p.how) for p in found.pairs] == [
        ("r1", "c1_quantized", "conv1", "qlinear"), ("r2", "c2_quantized", "conv2", "qlinear")]
    assert "'conv1_quant' includes the Relu" in found.pairs[0].note
    assert found.outputs == (TensorPair("logits", "logits", "fc", "name"),)
    assert found.unmatched == ()


def test_qoperator_int8_tensors_pair_by_quantized_name(float_cnn: onnx.ModelProto,
                                                       qop_cnn: onnx.ModelProto) -> None:
    """B runs MaxPool / Flatten on int8 and names the results ``<A name>_quantized``."""
    found = matching.match_models(float_cnn, qop_cnn, conv_layers=(),
                                  tensors=["p1", "g", "f", "c1"])
    assert [(p.a, p.b, p.how) for p in found.pairs] == [
        ("p1", "p1_quantized", "qlinear"), ("g", "g_quantized", "qlinear"),
        ("f", "f_quantized", "qlinear")]
    (unmatched,) = found.unmatched
    assert unmatched.tensor == "c1" and "fuses the Relu" in unmatched.reason


def test_int8_tensor_without_a_scale_source_is_unmatched(float_cnn: onnx.ModelProto,
                                                         qop_cnn: onnx.ModelProto) -> None:
    """An int8 MaxPool output whose chain reaches no QuantizeLinear / quantized op is refused."""
    broken = onnx.ModelProto()
    broken.CopyFrom(qop_cnn)
    for node in broken.graph.node:
        if node.op_type == "MaxPool":
            node.input[0] = "x_int8"  # fed by a plain graph input instead of the QLinearConv
    broken.graph.input.append(helper.make_tensor_value_info(
        "x_int8", onnx.TensorProto.UINT8, [None, 4, 16, 16]))
    found = matching.match_models(float_cnn, broken, conv_layers=(), tensors=["p1"])
    (unmatched,) = found.unmatched
    assert "without a scale/zero point" in unmatched.reason


def test_fp16_tensors_pair_by_name(float_cnn: onnx.ModelProto) -> None:
    half = graphs.fp16_model(float_cnn)
    found = matching.match_models(float_cnn, half, conv_layers=None, tensors=["p1", "f"])
    assert [(p.a, p.b, p.how) for p in found.pairs] == [
        ("c1", "c1", "fp16"), ("p1", "p1", "fp16"), ("c2", "c2", "fp16"), ("f", "f", "fp16")]
    assert found.outputs[0].how == "fp16"


def test_fp16_with_kept_io_types_pairs_through_cast(float_cnn: onnx.ModelProto) -> None:
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(float_cnn, keep_io_types=True)
    assert any(n.op_type == "Cast" for n in half.graph.node)
    found = matching.match_models(float_cnn, half)
    assert [(p.a, p.b, p.how) for p in found.pairs] == [("c1", "c1", "fp16"),
                                                        ("c2", "c2", "fp16")]
    assert found.outputs == (TensorPair("logits", "logits", "fc", "name"),)  # float32 Cast


def test_quantized_model_as_reference(float_cnn: onnx.ModelProto, qdq_cnn: onnx.ModelProto,
                                      qop_cnn: onnx.ModelProto) -> None:
    reverse = matching.match_models(qdq_cnn, float_cnn)
    assert [(p.a, p.b, p.how) for p in reverse.pairs] == [
        ("r1_DequantizeLinear_Output", "r1", "qdq"), ("r2_DequantizeLinear_Output", "r2", "qdq")]
    reverse = matching.match_models(qop_cnn, float_cnn)
    assert [(p.a, p.b, p.how, p.note) for p in reverse.pairs] == [
        ("c1_quantized", "r1", "conv-order", "Relu applied in B only"),
        ("c2_quantized", "r2", "conv-order", "Relu applied in B only")]


def test_same_name_other_shape_is_not_paired(float_cnn: onnx.ModelProto) -> None:
    rng = np.random.default_rng(5)
    other = replaced_initializer(float_cnn, "w2", rng.standard_normal((6, 4, 3, 3), np.float32))
    other = replaced_initializer(other, "b2", np.zeros(6, np.float32))
    other = replaced_initializer(other, "fc_w", np.ones((10, 6), np.float32))
    found = matching.match_models(float_cnn, other)
    assert [p.a for p in found.pairs] == ["c1"]
    assert [(u.model, u.tensor) for u in found.unmatched] == [("a", "c2"), ("b", "c2")]
    assert found.unmatched[0].reason == (
        "no conv layer of model B has the name 'conv2' or the weight shape (8, 4, 3, 3) at this "
        "position, and model B has a tensor named 'c2' but of shape ['N', 6, 8, 8], not "
        "['N', 8, 8, 8]; the models differ here")
    assert found.unmatched[1].reason == (
        "no conv layer of model A corresponds to this conv layer of model B")


def test_extra_conv_of_b_is_reported(float_cnn: onnx.ModelProto) -> None:
    found = matching.match_models(float_cnn, with_extra_conv(float_cnn))
    assert [p.a for p in found.pairs] == ["c1", "c2"]
    assert found.unmatched == (Unmatched(
        "b", "r2x", "conv_extra",
        "no conv layer of model A corresponds to this conv layer of model B"),)
    reverse = matching.match_models(with_extra_conv(float_cnn), float_cnn)
    assert [(u.model, u.tensor, u.layer) for u in reverse.unmatched] == [
        ("a", "r2x", "conv_extra")]
    assert "no conv layer of model B has the name 'conv_extra'" in reverse.unmatched[0].reason


def test_renamed_conv_pairs_by_order_and_outputs_by_position(float_cnn: onnx.ModelProto
                                                             ) -> None:
    renamed = onnx.ModelProto()
    renamed.CopyFrom(float_cnn)
    mapping = {"c1": "t1", "c2": "t2", "logits": "scores"}
    for node in renamed.graph.node:
        node.name = "n_" + node.name
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]
    renamed.graph.output[0].name = "scores"
    found = matching.match_models(float_cnn, renamed)
    assert [(p.a, p.b, p.layer, p.how) for p in found.pairs] == [
        ("c1", "t1", "conv1", "conv-order"), ("c2", "t2", "conv2", "conv-order")]
    assert found.outputs == (TensorPair("logits", "scores", "fc", "position"),)


def test_unknown_tensor_reason_lists_close_names(float_cnn: onnx.ModelProto) -> None:
    renamed = onnx.ModelProto()
    renamed.CopyFrom(float_cnn)
    for node in renamed.graph.node:
        node.input[:] = ["pool_out" if i == "p1" else i for i in node.input]
        node.output[:] = ["pool_out" if o == "p1" else o for o in node.output]
    found = matching.match_models(float_cnn, renamed, conv_layers=(), tensors=["p1", "g"])
    assert [p.a for p in found.pairs] == ["g"]
    assert found.unmatched[0].reason.startswith("no tensor named 'p1' in model B (")


def test_model_precision(float_cnn: onnx.ModelProto, qdq_cnn: onnx.ModelProto,
                         qop_cnn: onnx.ModelProto) -> None:
    assert matching.model_precision(float_cnn) == "fp32"
    assert matching.model_precision(graphs.fp16_model(float_cnn)) == "fp16"
    assert matching.model_precision(qdq_cnn) == "int8"
    assert matching.model_precision(qop_cnn) == "int8"
    bf16 = onnx.ModelProto()
    bf16.CopyFrom(float_cnn)
    bf16.graph.node.append(helper.make_node("Cast", ["logits"], ["bf"], to=TensorProto.BFLOAT16))
    assert matching.model_precision(bf16) == "bf16"
