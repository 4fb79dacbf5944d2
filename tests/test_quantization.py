"""Quantization (RQ-KMeans semantic ids, PQ asymmetric scores) and the semantic-id features."""

import numpy as np
import pytest

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.config import MAX_LEVELS, EM3Config
from em3_tf.quantization.alignment import content_features, item_codes
from em3_tf.quantization.pq import ProductQuantizer, asymmetric_scores, reference_scores
from em3_tf.quantization.rq import (ResidualQuantizer, collision_rate, nearest_items,
                                    utilisation)


@pytest.fixture(scope="module")
def cold_data():
    from em3_tf.data.synthetic import make_synthetic
    return make_synthetic(num_users=80, num_items=120, max_history_len=10, seed=5,
                          protocol="item_cold")


def test_rq_residual_error_falls_level_by_level(cold_data):
    x = content_features(cold_data.catalog)
    rq = ResidualQuantizer(levels=4, codebook_size=8, seed=0).fit(x)
    errors = [float(np.mean(np.sum(x * x, 1)))] + rq.residual_errors
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    codes = rq.encode(x).numpy()
    assert np.mean(np.sum((x - rq.decode(codes).numpy()) ** 2, 1)) == pytest.approx(
        errors[-1], rel=1e-4)
    assert 0.0 <= collision_rate(codes) < 1.0
    assert all(0 < u <= 1 for u in utilisation(codes, 8))


def test_codes_are_deterministic_for_a_seed(cold_data):
    a = item_codes(cold_data.catalog, 3, 8, "content", seed=1)
    b = item_codes(cold_data.catalog, 3, 8, "content", seed=1)
    c = item_codes(cold_data.catalog, 3, 8, "content", seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    aligned = item_codes(cold_data.catalog, 3, 8, "aligned", cold_data.splits["train"], seed=1)
    np.testing.assert_array_equal(
        aligned, item_codes(cold_data.catalog, 3, 8, "aligned", cold_data.splits["train"], seed=1))


def test_pq_asymmetric_scores_equal_a_numpy_reference():
    rng = np.random.default_rng(0)
    items = rng.normal(size=[300, 24]).astype(np.float32)
    pq = ProductQuantizer(num_subspaces=3, num_centroids=16).fit(items)
    codes = pq.encode(items).numpy()
    tables = pq.lookup_tables(rng.normal(size=[4, 24]).astype(np.float32))
    history = codes[rng.integers(300, size=[4, 9])]
    np.testing.assert_allclose(asymmetric_scores(tables, history).numpy(),
                               reference_scores(tables.numpy(), history), atol=1e-5)
    shared = asymmetric_scores(tables, codes).numpy()
    np.testing.assert_allclose(shared, reference_scores(
        tables.numpy(), np.broadcast_to(codes, (4,) + codes.shape)), atol=1e-5)


def test_pq_retrieval_recall_at_k_on_planted_data():
    """Planted: 20 clusters of 50 items; a query from a cluster must retrieve its own
    cluster's items. Recall@50 of PQ top-K against the exact inner-product top-K >= 0.9."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=[20, 32]) * 3
    items = (np.repeat(centers, 50, 0) + rng.normal(size=[1000, 32]) * 0.3).astype(np.float32)
    pq = ProductQuantizer(num_subspaces=8, num_centroids=32).fit(items)
    codes = pq.encode(items)
    queries = (centers[:8] + rng.normal(size=[8, 32]) * 0.3).astype(np.float32)
    approx = tf.math.top_k(asymmetric_scores(pq.lookup_tables(queries), codes), 50).indices
    exact = tf.math.top_k(queries @ items.T, 50).indices
    recall = np.mean([len(set(a) & set(e)) / 50 for a, e in zip(approx.numpy(), exact.numpy())])
    assert recall >= 0.9, recall


def test_bad_quantization_configs_get_clear_errors(cold_data):
    x = content_features(cold_data.catalog)
    with pytest.raises(ValueError, match="larger than the catalog"):
        ResidualQuantizer(2, len(x) + 1).fit(x)
    with pytest.raises(ValueError, match="`levels` must be in"):
        ResidualQuantizer(MAX_LEVELS + 1, 8)
    with pytest.raises(ValueError, match="semantic_id_levels"):
        EM3Config(semantic_id_levels=MAX_LEVELS + 1)
    with pytest.raises(ValueError, match="use_item_id=False"):
        EM3Config(use_item_id=False)
    with pytest.raises(ValueError, match=r"history_retrieval_k` \(K=60\).*L=50"):
        EM3Config(history_retrieval_k=60, max_history_len=50)
    with pytest.raises(ValueError, match="live history content"):
        EM3Config(history_retrieval_k=5, content_encoder="frozen", history_content="cache")
    with pytest.raises(ValueError, match="not divisible"):
        ProductQuantizer(num_subspaces=5).fit(np.zeros([40, 24], np.float32))
    with pytest.raises(ValueError, match="larger than the catalog"):
        ProductQuantizer(num_subspaces=2, num_centroids=50).fit(np.zeros([40, 24], np.float32))
    with pytest.raises(ValueError, match="`k` must be in"):
        nearest_items(x[:10], 10)
    with pytest.raises(ValueError, match="source"):
        item_codes(cold_data.catalog, 2, 8, "magic")
    from em3_tf.models.ranker import EM3Ranker
    with pytest.raises(ValueError, match="semantic_codes"):  # aligned codes need interactions
        EM3Ranker(EM3Config.preset("sid_dcn"), cold_data.vocabularies(), cold_data.catalog)


def _sid_model(data, preset):
    from em3_tf.models.ranker import EM3Ranker
    tf.keras.utils.set_random_seed(0)
    config = EM3Config.preset(preset, max_history_len=10, width=16, num_heads=2,
                              semantic_id_codebook=8,
                              **({"history_retrieval_k": 4} if preset == "em3_pq" else {}))
    codes = item_codes(data.catalog, 3, 8, "aligned", data.splits["train"])
    model = EM3Ranker(config, data.vocabularies(), data.catalog, semantic_codes=codes)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    return model, codes


def test_a_held_out_item_gets_codes_from_content_and_trained_code_embeddings(cold_data):
    """A cold item (no training row) has real codes, computed from its content, and the
    embedding rows of its codes move in training, trained by the warm items sharing them;
    its item-id embedding is the untrained OOV row."""
    model, codes = _sid_model(cold_data, "sid_dcn")
    catalog_ids = cold_data.catalog.item_ids
    trained = set(cold_data.splits["train"][F.ITEM_ID].tolist())
    cold = [k for k, i in enumerate(catalog_ids.tolist()) if i not in trained]
    assert cold, "the item_cold protocol holds items out of training"
    model.fit(cold_data.dataset("train", 64).take(1), epochs=1, verbose=0)
    layer = model.semantic_ids
    item = cold[0]
    served = layer.codes_of(tf.constant([F.keys_of(catalog_ids[item:item + 1])[0]])).numpy()[0]
    np.testing.assert_array_equal(served, codes[item])  # from content, not "unknown"
    before = layer.level_tables[0].embeddings.numpy()[codes[item, 0]].copy()
    model.fit(cold_data.dataset("train", 64), epochs=2, verbose=0)
    after = layer.level_tables[0].embeddings.numpy()[codes[item, 0]]
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize("preset", ["em3_sid", "sid_dcn", "em3_pq"])
def test_savedmodel_round_trip_with_codes_gives_the_same_scores(cold_data, preset, tmp_path):
    """Semantic-id codes, and the retrieval's codebooks and codes, travel with the export:
    served scores equal the Keras model's (tolerance 1e-5)."""
    from em3_tf.export import export_saved_model
    model, _ = _sid_model(cold_data, preset)
    model.fit(cold_data.dataset("train", 64).take(3), epochs=1, verbose=0)
    rows = {k: v[:32] for k, v in cold_data.model_features("test").items() if k != F.LABEL}
    model.sync_content_cache()  # what export does first (refits the retrieval's codebooks)
    expected = model(rows).numpy()
    path = export_saved_model(model, str(tmp_path / "export"))
    served = tf.saved_model.load(path).signatures["serving_default"](
        examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
