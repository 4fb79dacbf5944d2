"""Quantization (RQ-KMeans semantic ids, PQ asymmetric scores) and the semantic-id features."""

import numpy as np
import pytest

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.config import MAX_LEVELS, EM3Config
from em3_tf.layers.codebook_retrieval import CodebookRetrieval, recall_at_k
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
    recall = recall_at_k(approx, queries @ items.T)
    assert recall >= 0.9, recall


def _pq_model(use_feedback=True, length=200, k=20):
    """An `em3_pq` model over a SYNTHETIC catalog of 1,000 items (preset's 16 x 256 PQ),
    as built, with 8 random histories of `length` items and their feedback."""
    from em3_tf.data.synthetic import make_catalog
    from em3_tf.models.ranker import EM3Ranker
    catalog, _ = make_catalog(1000, 8, seed=0)
    tf.keras.utils.set_random_seed(0)
    config = EM3Config.preset("em3_pq", max_history_len=length, history_retrieval_k=k,
                              use_feedback=use_feedback)
    model = EM3Ranker(config, {F.USER_ID: np.arange(1, 5), F.ITEM_ID: catalog.item_ids},
                      catalog)
    rng = np.random.default_rng(0)
    shape = [8, length]
    sequences = {F.HISTORY: tf.constant(rng.choice(catalog.item_ids, size=shape)),
                 F.HISTORY_LABELS: tf.constant(rng.integers(0, 2, shape)),
                 F.HISTORY_RATINGS: tf.constant(rng.integers(1, 6, shape)),
                 F.HISTORY_SECONDS: tf.constant(rng.integers(0, 10 ** 7, shape))}
    target = model.content(model.content.rows_of(tf.constant(catalog.item_ids[:8])))
    model.refit_codebooks()
    return model, target, sequences


def test_em3_pq_retrieves_the_exact_content_attentions_top_k():
    """In `em3_pq` the retrieval estimates the content attention's own logits (dot scorer):
    its top 20 of 200 history items recover >= 0.9 of the exact attention's top 20. Negative
    control: codes of the content embeddings instead of the attention keys fall short."""
    model, target, sequences = _pq_model(use_feedback=False)
    exact = model.content_logits(target, sequences)
    recall = recall_at_k(model.retrieve(target, sequences), exact)
    model.retrieval.fit(model.content.encode_all(adapter=True))  # wrong space: not the keys
    wrong = recall_at_k(model.retrieve(target, sequences), exact)
    print(f"recall@20 {recall:.3f}; with codes of the content embeddings {wrong:.3f}")
    assert recall >= 0.9, recall
    assert wrong < recall - 0.2, wrong


def test_em3_pq_retrieval_includes_the_feedback_share_of_the_logit():
    """With feedback, each entry's logit has an exact part from its feedback embedding
    (planted: the label embeddings scaled up, so that feedback weighs as trained ones do).
    Retrieval recall stays >= 0.9 with it and falls without it."""
    model, target, sequences = _pq_model(use_feedback=True)
    model.retrieve(target, sequences)  # builds the feedback embedding
    labels = model.content_feedback.label_embedding.embeddings
    labels.assign(labels * 20.0)
    exact = model.content_logits(target, sequences)
    recall = recall_at_k(model.retrieve(target, sequences), exact)
    no_feedback = model.retrieval(model.content_attention.queries(target),
                                  model.content.rows_of(sequences[F.HISTORY]),
                                  tf.ones_like(sequences[F.HISTORY], tf.bool))[0]
    without = recall_at_k(no_feedback, exact)
    print(f"recall@20 {recall:.3f}; without the feedback term {without:.3f}")
    assert recall >= 0.9, recall
    assert without < recall - 0.2, without


def test_retrieving_the_whole_history_gives_the_exact_attention():
    """K = L: the retrieved branch keeps every entry, and the pooled interest equals the
    exact content attention over the whole history (tolerance 1e-5)."""
    model, target, sequences = _pq_model(use_feedback=True, length=30, k=30)
    retrieved = model._retrieved_interest(target, sequences, None, False, lambda x: x)
    history = model._with_feedback(
        "content_feedback", model._history_content(sequences[F.HISTORY], False), sequences)
    exact = model.content_attention(target, history,
                                    tf.not_equal(sequences[F.HISTORY], F.PAD_ID))
    np.testing.assert_allclose(retrieved.numpy(), exact.numpy(), atol=1e-5)


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
    with pytest.raises(ValueError, match="content_attention='dot'"):
        EM3Config(history_retrieval_k=5, content_attention="mlp")
    with pytest.raises(ValueError, match="`content_attention` must be one of"):
        EM3Config(content_attention="cosine")
    with pytest.raises(ValueError, match="larger than the catalog"):
        CodebookRetrieval(num_rows=11, dim=8, k=2, num_subspaces=2, num_centroids=16)
    with pytest.raises(ValueError, match="`k` must be >= 1"):
        CodebookRetrieval(num_rows=101, dim=8, k=0)
    with pytest.raises(ValueError, match="not divisible"):
        ProductQuantizer(num_subspaces=5).fit(np.zeros([40, 24], np.float32))
    with pytest.raises(ValueError, match="larger than the catalog"):
        ProductQuantizer(num_subspaces=2, num_centroids=50).fit(np.zeros([40, 24], np.float32))
    with pytest.raises(ValueError, match="`k` must be in"):
        nearest_items(x[:10], 10)
    with pytest.raises(ValueError, match="source"):
        item_codes(cold_data.catalog, 2, 8, "magic")
    from em3_tf.models.ranker import EM3Ranker
    for preset in ("sid_dcn", "em3_sid_own"):  # codes from interactions / a first stage
        with pytest.raises(ValueError, match="semantic_codes"):
            EM3Ranker(EM3Config.preset(preset), cold_data.vocabularies(), cold_data.catalog)


def _sid_model(data, preset):
    from em3_tf.models.ranker import EM3Ranker
    tf.keras.utils.set_random_seed(0)
    config = EM3Config.preset(preset, max_history_len=10, width=16, num_heads=2,
                              semantic_id_codebook=8,
                              **({"history_retrieval_k": 4, "pq_centroids": 16} if preset == "em3_pq"
                                 else {}))
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


def test_em3_source_quantizes_the_first_stage_trained_content_embeddings(cold_data):
    """`semantic_id_source='em3'` is a two-stage training: the model without codes first
    (trained, never evaluated on test), then the ranker with the codes of its trained,
    L2-normalised content embeddings (every catalog item's; a held-out item's from its
    content)."""
    from em3_tf.quantization.rq import ResidualQuantizer
    from em3_tf.training import compile_ranker, train_and_evaluate
    config = EM3Config.preset("em3_sid", max_history_len=10, width=16, num_heads=2,
                              semantic_id_codebook=8, semantic_id_source="em3")
    assert config.two_stage and not config.first_stage().semantic_id_levels
    assert not EM3Config.preset("em3_sid").two_stage  # co-engagement-aligned by default
    model, report = train_and_evaluate(config, cold_data, epochs=1, batch_size=512, verbose=0)
    first = report["first_stage"]
    assert first["eval_auc"] is not None  # trained with validation on eval...
    assert "auc" not in first and "auc" in report  # ... and never scored on test
    assert report["train_seconds"] >= first["train_seconds"] > 0
    # the second stage's codes are the RQ codes of a trained first stage's content
    first_model = compile_ranker(
        config.first_stage(), cold_data.vocabularies(), cold_data.catalog)
    keys = tf.constant(F.keys_of(cold_data.catalog.item_ids))
    untrained = first_model.content(first_model.content.rows_of(keys)).numpy()
    first_model.fit(cold_data.dataset("train", 64).take(3), epochs=1, verbose=0)
    embeddings = first_model.content(first_model.content.rows_of(keys)).numpy()  # by id
    assert np.abs(embeddings - untrained).max() > 1e-4
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = ResidualQuantizer(3, 8, seed=0).fit(embeddings).encode(embeddings).numpy()
    codes = item_codes(cold_data.catalog, 3, 8, "em3", content_model=first_model)
    np.testing.assert_array_equal(codes, expected)
    second = compile_ranker(config, cold_data.vocabularies(), cold_data.catalog,
                            first_stage=first_model)
    np.testing.assert_array_equal(second.semantic_ids.codes_of(keys).numpy(), codes)
    assert not np.array_equal(codes, item_codes(cold_data.catalog, 3, 8, "content"))


def test_em3_source_needs_a_trained_content_model(cold_data):
    with pytest.raises(ValueError, match="content_model"):
        item_codes(cold_data.catalog, 3, 8, "em3")
    with pytest.raises(ValueError, match="needs a `content_encoder`"):
        EM3Config.preset("sid_dcn", semantic_id_source="em3")
    # a first stage is a valid config even where the codes stand in for the item id
    codes_only = EM3Config.preset("em3_sid_own", use_item_id=False, use_id_sequence=False,
                                  cic_weight=0.0)
    assert codes_only.first_stage().use_item_id and not codes_only.first_stage().two_stage
