"""The encoder backend as a spec parameter (``dense(backend=onnx)``, ``impact(...)``,
``muvera(...)``): the index encodes documents and queries with it, names it in its vectors'
identity (so repconc does not reuse another backend's vectors), carries it into its Ray model
work, and refuses to reopen with another backend."""

from __future__ import annotations

import pytest

from genseek.collection import Collection
from genseek.errors import GenseekError, InvalidParameter
from genseek.spec import IndexSpec
from genseek.types import Document

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

DOCS = [Document(f"d{i}", f"title {i}", text) for i, text in enumerate([
    "Cells divide by mitosis into two daughter cells.",
    "Tumour suppressor genes such as p53 halt the cell cycle.",
    "Vaccines train the immune system with antigens.",
    "Insulin lowers blood glucose after a meal.",
    "Neurons signal with action potentials along axons.",
])]


def test_dense_onnx_backend_spec(tmp_path):
    with Collection.create(tmp_path / "c", {"dense": "dense(backend=onnx)",
                                            "torch": "dense"}) as coll:
        coll.write(DOCS)
        onnx, torch = coll.index("dense"), coll.index("torch")
        assert onnx.vector_model.endswith("[onnx]") and "[" not in torch.vector_model
        assert onnx.document_work().key != torch.document_work().key
        assert dict(onnx.document_work().options) == {"backend": "onnx"}
        for query in ("how do cells divide", "blood sugar hormone"):
            a = coll.search(query, k=3, index="dense")
            b = coll.search(query, k=3, index="torch")
            assert [h.doc_id for h in a] == [h.doc_id for h in b]  # float32 either way
            assert abs(a[0].score - b[0].score) < 1e-4
    with pytest.raises(GenseekError, match="backend"):
        from genseek.indexers.dense import DenseIndex

        DenseIndex(tmp_path / "c" / "indexes" / "dense", {"backend": "torch"})


def test_backend_is_checked_in_every_encoder_spec():
    for spec in ("dense(backend=onnx-int8)", "impact(backend=onnx)", "muvera(backend=onnx)"):
        assert IndexSpec.parse(spec)
    with pytest.raises(InvalidParameter, match="backend"):
        from genseek.registry import index_schemas

        index_schemas("dense")[0].resolve({"backend": "tensorrt"})
