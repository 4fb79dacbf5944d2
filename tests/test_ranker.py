import numpy as np
import pytest

from conftest import first_rows
from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.config import PRESETS, EM3Config
from em3_tf.export import export_saved_model, load_config
from em3_tf.training import build_ranker, train_and_evaluate


def _model(data, preset="em3", **overrides):
    tf.keras.utils.set_random_seed(0)
    if PRESETS[preset].get("history_retrieval_k"):  # K and C must fit the small test data
        overrides.setdefault("history_retrieval_k", 5)
        overrides.setdefault("pq_centroids", 16)
    config = EM3Config.preset(preset, max_history_len=10, width=16, num_heads=2, **overrides)
    first = None
    if config.two_stage:  # codes of a first stage's content (untrained here: only the shape
        first = build_ranker(config.first_stage(), data)  # of the pipeline is under test)
    return build_ranker(config, data, first_stage=first)


def _grad_names(model, loss_fn):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, model.trainable_variables)
    return {v.name for v, g in zip(model.trainable_variables, grads)
            if g is not None and np.abs(tf.convert_to_tensor(g).numpy()).max() > 0}


def _qformer_vars(model):
    qformer = model.content.qformer
    lora = {v.name for v in qformer.adapter_variables()}
    base = {v.name for v in qformer.trainable_variables} - lora
    return base, lora


@pytest.mark.parametrize("lora_scope", ["all", "output"])
def test_history_branch_trains_only_lora_and_target_branch_trains_full_module(small_data,
                                                                             lora_scope):
    model = _model(small_data, "em3", lora_scope=lora_scope)
    inputs = F.check_features(first_rows(small_data, "train", 32), (), False, 10, feedback=True)
    model(inputs)
    for layer in model.content.qformer.submodules:  # make every adapter non-trivial
        if getattr(layer, "lora_b", None) is not None:
            layer.lora_b.assign(tf.random.normal(layer.lora_b.shape, stddev=0.1))
    base, lora = _qformer_vars(model)
    history = _grad_names(model, lambda: tf.reduce_sum(
        model._history_content(inputs[F.HISTORY], training=True) ** 2))
    assert history & lora == lora, "every LoRA adapter gets a gradient from the history"
    assert not history & base, f"base weights got history gradients: {sorted(history & base)}"
    target = _grad_names(model, lambda: tf.reduce_sum(
        model.content(model.content.rows_of(inputs[F.ITEM_ID]), training=True) ** 2))
    assert target & base == base and not target & lora


def test_without_lora_the_history_branch_trains_the_base_weights(small_data):
    model = _model(small_data, "em3_no_lora")
    inputs = F.check_features(first_rows(small_data, "train", 32), (), False, 10, feedback=True)
    model(inputs)
    base, lora = _qformer_vars(model)
    history = _grad_names(model, lambda: tf.reduce_sum(
        model._history_content(inputs[F.HISTORY], training=True) ** 2))
    assert history & base == base and not history & lora


def test_dedupe_history_gives_the_same_content(small_data):
    inputs = F.check_features(first_rows(small_data, "test", 16), (), False, 10, feedback=True)
    a = _model(small_data, "em3", dedupe_history=True)
    b = _model(small_data, "em3", dedupe_history=False)
    a(inputs), b(inputs)
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(a._history_content(inputs[F.HISTORY], False).numpy(),
                               b._history_content(inputs[F.HISTORY], False).numpy(), atol=1e-5)


def test_shared_fusion_gives_the_separate_branches_scores_loss_and_gradients(small_data):
    """One Q-Former pass per distinct item for both branches (`share_fusion`) must be the
    separate branches' forward and backward: a history gradient leaking into the base
    weights, or a target losing its gradient, changes the gradients compared here. Modality
    dropout is off: the shared pass gives an item one draw for both of its roles."""
    rows = first_rows(small_data, "train", 48)
    assert np.intersect1d(rows[F.ITEM_ID], rows[F.HISTORY]).size, "no item in both roles"
    off = dict(modality_dropout=0.0, dropout=0.0, id_dropout=0.0)
    shared, separate = (_model(small_data, "em3", share_fusion=s, **off) for s in (True, False))
    assert shared._shares_fusion() and not separate._shares_fusion()
    for model in (shared, separate):
        model.compute_loss(rows, training=True)  # builds every layer, the CIC head included
    for layer in shared.content.qformer.submodules:  # make the adapter non-trivial
        if getattr(layer, "lora_b", None) is not None:
            layer.lora_b.assign(tf.random.normal(layer.lora_b.shape, stddev=0.1))
    separate.set_weights(shared.get_weights())
    np.testing.assert_allclose(shared(rows).numpy(), separate(rows).numpy(), atol=1e-5)
    results = []
    for model in (shared, separate):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(rows, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for variable, a, b in zip(shared.trainable_variables, results[0][1], results[1][1]):
        # relative to the gradient's size: a leaked or lost term is of the same order
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-7, variable.name


def test_shared_fusion_needs_the_output_scope(small_data):
    model = _model(small_data, "em3", lora_scope="all", share_fusion=True)
    assert not model._shares_fusion()  # the config is accepted; the model encodes apart
    rows = tf.constant([1, 2])
    with pytest.raises(ValueError, match="lora_scope='output'"):
        model.content.encode_branches(rows, rows)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_and_predicts(small_data, preset):
    model = _model(small_data, preset, cic_num_negatives=4 if preset == "em3" else 0)
    history = model.fit(small_data.dataset("train", 64).take(3), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    if PRESETS[preset].get("cic_weight", 0.1) > 0:
        assert "cic_loss" in history.history
    scores = model.predict(small_data.dataset("test", 64, with_label=False), verbose=0)
    assert scores.shape == (len(small_data.splits["test"][F.ITEM_ID]),)
    assert np.all((scores > 0) & (scores < 1))


def test_score_table_of_a_keras_model_lines_scores_up_with_ids(small_data):
    from em3_tf.scoring import score_table
    model = _model(small_data, "em3")
    features = small_data.model_features("test")
    table = score_table(model, features, batch_size=50)
    expected = model.predict(small_data.dataset("test", 64, with_label=False), verbose=0)
    assert list(table.columns) == [F.USER_ID, F.ITEM_ID, "score", F.LABEL]
    assert table[F.ITEM_ID].tolist() == features[F.ITEM_ID].tolist()
    assert table[F.LABEL].tolist() == features[F.LABEL].tolist()
    np.testing.assert_allclose(table["score"], expected.reshape(-1), atol=1e-6)


def _with_string_ids(data):
    """`data` with every user and item id written as a string ("u0007", "i0012"; padding ""),
    zero-padded so that the sorted vocabularies keep the integers' order."""
    import dataclasses

    def text(prefix, ids):
        ids = np.asarray(ids)
        return np.where(ids == F.PAD_ID, "", np.char.add(prefix, np.char.zfill(ids.astype(str), 4)))

    splits = {name: {**part, F.USER_ID: text("u", part[F.USER_ID]),
                     F.ITEM_ID: text("i", part[F.ITEM_ID]), F.HISTORY: text("i", part[F.HISTORY])}
              for name, part in data.splits.items()}
    catalog = dataclasses.replace(data.catalog, item_ids=text("i", data.catalog.item_ids))
    return dataclasses.replace(data, splits=splits, catalog=catalog)


def test_string_ids_train_score_like_their_integer_twins_and_refuse_integers(small_data):
    """The same data with string ids: the same vocabulary order and catalog rows, so the same
    weights give the same scores on known ids (training rows; tolerance 1e-5); integer ids are
    refused."""
    strings = _with_string_ids(small_data)
    assert strings.string_ids and not small_data.string_ids
    a, b = _model(small_data, "em3"), _model(strings, "em3")
    good, twin = first_rows(strings, "train", 16), first_rows(small_data, "train", 16)
    a(twin), b(good)
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(b(good).numpy(), a(twin).numpy(), atol=1e-5)
    history = b.fit(strings.dataset("train", 64).take(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    with pytest.raises(F.FeatureError, match="'user_id' must be a string tensor"):
        b(first_rows(small_data, "test", 8))


def test_oov_rows_move_in_training_only_with_id_dropout(small_data):
    """Every training id is in the vocabulary, so without ID dropout no training example ever
    reaches the OOV row; with it, the "unknown" user and item rows are trained."""
    for dropout in (0.3, 0.0):
        model = _model(small_data, "id_din", id_dropout=dropout)
        model(first_rows(small_data, "train", 4))
        tables = {n: model.id_embeddings[n].embedding.embeddings for n in (F.USER_ID, F.ITEM_ID)}
        before = {n: t.numpy()[0].copy() for n, t in tables.items()}
        model.fit(small_data.dataset("train", 64).take(5), epochs=1, verbose=0)
        moved = {n: float(np.abs(t.numpy()[0] - before[n]).max()) for n, t in tables.items()}
        if dropout:
            assert min(moved.values()) > 1e-4, moved
        else:
            assert max(moved.values()) == 0.0, moved


def test_no_stale_cache_at_evaluation_prediction_or_export(small_data, tmp_path):
    """Whenever weights moved after the last refresh, evaluate / predict / export re-encode
    the history cache first (the scores never come from a stale cache)."""
    model = _model(small_data, "em3_cached", learning_rate=0.05)
    train = small_data.dataset("train", 64)
    model.fit(train.take(3), epochs=1, verbose=0)

    def fresh():
        return model.content.encode_all().numpy()

    def move_weights():
        for batch in train.take(2):
            model.train_step(batch)
        assert np.abs(model.content_cache.numpy() - fresh()).max() > 1e-4  # stale now

    np.testing.assert_allclose(model.content_cache.numpy(), fresh(), atol=1e-6)  # fit's end
    move_weights()
    model.evaluate(small_data.dataset("eval", 64), verbose=0)
    np.testing.assert_allclose(model.content_cache.numpy(), fresh(), atol=1e-6)
    move_weights()
    model.predict(small_data.dataset("test", 64, with_label=False), verbose=0)
    np.testing.assert_allclose(model.content_cache.numpy(), fresh(), atol=1e-6)
    move_weights()
    rows = first_rows(small_data, "test", 20)
    rows.pop(F.LABEL)
    path = export_saved_model(model, str(tmp_path / "1"))
    served = tf.saved_model.load(path).signatures["serving_default"](
        examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    np.testing.assert_allclose(model.content_cache.numpy(), fresh(), atol=1e-6)
    np.testing.assert_allclose(served, model(rows).numpy(), atol=1e-6)


def test_early_stopping_restores_the_best_eval_epoch_and_its_cache(small_data):
    from em3_tf.training import fit
    model = _model(small_data, "em3_cached", learning_rate=0.03)
    history = fit(model, small_data, epochs=4, batch_size=64, verbose=0, patience=1)
    val_auc = history.history["val_auc"]
    restored = model.evaluate(small_data.dataset("eval", 1024), return_dict=True, verbose=0)
    assert restored["auc"] == pytest.approx(max(val_auc), abs=1e-6)
    np.testing.assert_allclose(model.content_cache.numpy(), model.content.encode_all().numpy(),
                               atol=1e-6)


def test_cache_mode_reads_the_refreshed_cache(small_data):
    model = _model(small_data, "em3_cached")
    inputs = F.check_features(first_rows(small_data, "test", 8), (), False, 10, feedback=True)
    model(inputs)
    assert np.all(model.content_cache.numpy() == 0)
    model.refresh_content_cache()
    rows = model.content.rows_of(inputs[F.HISTORY])
    expected = model.content(tf.reshape(rows, [-1]), training=False).numpy()
    np.testing.assert_allclose(
        model._history_content(inputs[F.HISTORY], False).numpy().reshape(expected.shape),
        expected, atol=1e-5)


def test_bad_input_names_the_feature(small_data):
    model = _model(small_data, "em3")
    good = first_rows(small_data, "test", 4)
    model(good)
    bad = {k: v for k, v in good.items() if k != F.HISTORY}
    with pytest.raises(F.FeatureError, match="history_item_ids"):
        model(bad)
    with pytest.raises(F.FeatureError, match="'item_id' must be an integer"):
        model(dict(good, item_id=good[F.ITEM_ID].astype(np.float32)))
    with pytest.raises(F.FeatureError, match="'user_id' must have shape"):
        model(dict(good, user_id=good[F.USER_ID].reshape(2, 2, 1)))
    with pytest.raises(F.FeatureError, match="'history_item_ids' must have rank 2"):
        model(dict(good, history_item_ids=good[F.HISTORY].reshape(-1)))
    with pytest.raises(F.FeatureError, match="'user_id' must be an integer"):
        model(dict(good, user_id=np.array(["a", "b", "c", "d"])))
    with pytest.raises(F.FeatureError, match="history_labels"):
        model({k: v for k, v in good.items() if k != F.HISTORY_LABELS})
    no_feedback = _model(small_data, "em3_no_feedback")
    assert no_feedback({k: v for k, v in good.items() if k not in F.FEEDBACK_FEATURES}).shape == 4


def test_config_validation_names_the_argument():
    with pytest.raises(ValueError, match="content_encoder"):
        EM3Config(content_encoder="magic")
    with pytest.raises(ValueError, match="history_content='lora'"):
        EM3Config(content_encoder="concat_mlp", history_content="lora")
    with pytest.raises(ValueError, match="preset"):
        EM3Config.preset("em4")
    with pytest.raises(ValueError, match="id_dropout"):
        EM3Config(id_dropout=1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        EM3Config(lr_schedule="step")
    config = EM3Config.preset("em3_no_cic", mlp_units=[8])
    assert EM3Config.from_json(config.to_json()) == config


def test_saved_model_round_trip_gives_identical_scores(small_data, tmp_path):
    model = _model(small_data, "em3")
    model.fit(small_data.dataset("train", 64).take(2), epochs=1, verbose=0)
    rows = first_rows(small_data, "test", 20)
    expected = model(rows).numpy()
    path = export_saved_model(model, str(tmp_path / "1"))
    assert load_config(path) == model.config
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](
        examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-6)
    raw = loaded.signatures["predict_features"](
        **{k: tf.constant(v) for k, v in rows.items() if k != F.LABEL})["scores"].numpy()
    np.testing.assert_allclose(raw, expected, atol=1e-6)
    with pytest.raises(FileExistsError):
        export_saved_model(model, path)


def test_checkpoint_restore_gives_identical_scores(small_data, tmp_path):
    model = _model(small_data, "em3")
    model.fit(small_data.dataset("train", 64).take(2), epochs=1, verbose=0)
    rows = first_rows(small_data, "test", 20)
    model.save_weights(str(tmp_path / "ckpt"))
    clone = _model(small_data, "em3")
    clone(rows)
    clone.load_weights(str(tmp_path / "ckpt"))
    np.testing.assert_allclose(clone(rows).numpy(), model(rows).numpy(), atol=1e-6)


def test_em3_beats_id_only_on_cold_items(cold_start_data):
    """The planted signal reaches cold items only through content (fixed seeds).

    Margin required: 0.05 AUC on the cold test items (measured about 0.15 at these settings).
    """
    common = dict(max_history_len=20, learning_rate=3e-3)
    _, em3 = train_and_evaluate(EM3Config.preset("em3", **common), cold_start_data, epochs=10,
                                verbose=0)
    _, ids = train_and_evaluate(EM3Config.preset("id_dcn", **common), cold_start_data, epochs=10,
                                verbose=0)
    print(f"cold AUC: em3 {em3['cold_auc']:.3f}, id_dcn {ids['cold_auc']:.3f}")
    assert em3["cold_examples"] > 600
    assert em3["cold_auc"] > ids["cold_auc"] + 0.05


@pytest.mark.parametrize("preset", ["em3", "em3_pq"])
def test_mixed_precision_training_updates_weights(small_data, preset):
    """EM3 (and EM3 with codebook retrieval, whose PQ scores stay float32) trains under
    mixed_float16 (the pipeline's --mixed-precision): losses stay float32, the loss is finite
    and the weights move (after the dynamic loss scale has settled: steps whose scaled
    gradients overflow are skipped)."""
    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(small_data, preset)
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05))
        assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        model(first_rows(small_data, "train", 4))
        before = {v.name: v.numpy().copy() for v in model.trainable_variables}
        history = model.fit(small_data.dataset("train", 16).take(15), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        moved = [np.abs(before[v.name] - v.numpy()).max() for v in model.trainable_variables
                 if v.name in before]
        assert max(moved) > 1e-3
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)


def test_content_learning_rate_scale_scales_the_content_encoders_steps(small_data):
    """`content_lr_scale` reaches the content encoder even though the optimizer is made
    before the model's layers are built (as `build_ranker` does): Adam's first step moves
    each weight by about its learning rate, so the content weights move ~0.01x as far."""
    batch = next(iter(small_data.dataset("train", 32)))
    moved = {}
    for scale in (1.0, 0.01):
        model = _model(small_data, "em3", content_lr_scale=scale, learning_rate=0.01,
                       modality_dropout=0.0, dropout=0.0)
        model.compute_loss(batch, training=True)  # builds every layer, CIC's too
        content = {id(v) for v in model.content.trainable_variables}
        before = {id(v): v.numpy().copy() for v in model.trainable_variables}
        model.train_step(batch)
        moved[scale] = {group: max(np.abs(before[id(v)] - v.numpy()).max()
                                   for v in model.trainable_variables
                                   if (id(v) in content) == (group == "content"))
                        for group in ("content", "rest")}
    assert moved[0.01]["content"] < 0.05 * moved[1.0]["content"], moved
    assert moved[0.01]["rest"] > 0.5 * moved[1.0]["rest"], moved


def test_mixed_precision_with_a_content_learning_rate_scale(small_data):
    """The content encoder's own learning rate (TFRS CompositeOptimizer) under mixed_float16:
    Keras wraps the composite in a LossScaleOptimizer and both groups of weights train."""
    from em3_tf.training import make_optimizer

    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(small_data, "em3", content_lr_scale=0.3, learning_rate=0.01)
        model.compile(optimizer=make_optimizer(model.config, model))
        assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        model(first_rows(small_data, "train", 4))
        content = {id(v) for v in model.content.trainable_variables}
        before = {id(v): v.numpy().copy() for v in model.trainable_variables}
        model.fit(small_data.dataset("train", 16).take(15), epochs=1, verbose=0)
        moved = {group: max(np.abs(before[id(v)] - v.numpy()).max()
                            for v in model.trainable_variables if id(v) in before
                            and (id(v) in content) == (group == "content"))
                 for group in ("content", "rest")}
        assert min(moved.values()) > 1e-4, moved
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)


def test_loss_scaling_keeps_gradients_that_underflow_float16(small_data):
    """Under mixed_float16, with the loss shrunk by 1e-7 the float16 activation gradients
    underflow to zero: TFRS's own train_step (no loss scaling) leaves the Q-Former's token
    projection untouched, EM3Ranker's scaled train_step moves it (Adam turns any surviving
    gradient into a step of about the learning rate)."""
    from em3_tf._tf import tfrs
    from em3_tf.models.ranker import EM3Ranker

    class Tiny(EM3Ranker):
        def compute_loss(self, features, training=False):
            return super().compute_loss(features, training) * 1e-7

    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        batch = next(iter(small_data.dataset("train", 64)))
        moved = {}
        for name, step in (("unscaled", tfrs.Model.train_step), ("scaled", Tiny.train_step)):
            tf.keras.utils.set_random_seed(0)
            config = EM3Config.preset("em3", max_history_len=10, width=16, num_heads=2,
                                      cic_weight=0.0)
            model = Tiny(config, small_data.vocabularies(), small_data.catalog)
            model.compile(optimizer=tf.keras.optimizers.Adam(1e-2, epsilon=1e-12))
            assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
            model(first_rows(small_data, "train", 4))
            kernel = model.content.qformer.projections["text"].kernel
            before = kernel.numpy().copy()
            step(model, batch)
            moved[name] = float(np.abs(kernel.numpy() - before).max())
        assert moved["unscaled"] == 0.0, moved
        assert moved["scaled"] > 1e-3, moved
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)


@pytest.mark.parametrize("preset", ["em3", "em3_no_lora", "em3_cached", "frozen_content"])
def test_exported_content_table_scores_like_the_live_encoder(small_data, tmp_path, preset):
    """The export stores every catalog item's content embeddings and serves from them: the
    scores equal the in-memory model's live encoder (tolerance 1e-5), and they do come from
    the table (corrupting it in memory moves `serve`'s scores)."""
    model = _model(small_data, preset, learning_rate=0.01)
    model.fit(small_data.dataset("train", 64).take(3), epochs=1, verbose=0)
    rows = first_rows(small_data, "test", 30)
    rows.pop(F.LABEL)
    rows[F.ITEM_ID][:3] = [10 ** 9, 10 ** 9 + 1, 10 ** 9 + 2]  # not in the catalog
    expected = model(rows).numpy()
    path = export_saved_model(model, str(tmp_path / "1"))
    served = tf.saved_model.load(path).signatures["serving_default"](
        examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    table = model.content_table.tables["target"]
    table.assign(table.numpy() + 1.0)
    assert np.abs(model.serve(rows).numpy() - expected).max() > 1e-4


def test_content_table_lookup_and_growth():
    from em3_tf.layers.content_table import ContentTable

    table = ContentTable([30, 10, 20], np.arange(8, dtype=np.float32).reshape(4, 2))
    got = table(tf.constant([[10, 20, 30], [-1, 5, 99]], tf.int64)).numpy()
    # row 0 (unknown) = [0, 1]; id 30 -> [2, 3], id 10 -> [4, 5], id 20 -> [6, 7]
    np.testing.assert_array_equal(got, [[[4, 5], [6, 7], [2, 3]], [[0, 1], [0, 1], [0, 1]]])
    table.assign([30, 10, 20, 5], np.arange(10, dtype=np.float32).reshape(5, 2))
    np.testing.assert_array_equal(table(tf.constant([5, 20], tf.int64)).numpy(),
                                  [[8, 9], [6, 7]])
    with pytest.raises(ValueError, match="history"):
        table.assign([1], np.zeros([2, 2]), np.zeros([2, 2]))
    with pytest.raises(ValueError, match="target"):
        ContentTable([1, 2], np.zeros([2, 2]))


def test_serving_context_signature_scores_like_the_flat_one(small_data, tmp_path):
    """Two ExampleListWithContext requests of different lengths in one batch: each list's
    scores equal the flat signature's on the merged examples, padding is zero."""
    from tensorflow_serving.apis import input_pb2

    model = _model(small_data, "em3")
    model.fit(small_data.dataset("train", 64).take(2), epochs=1, verbose=0)
    rows = first_rows(small_data, "test", 5)
    rows.pop(F.LABEL)
    signatures = tf.saved_model.load(export_saved_model(model, str(tmp_path / "1"))).signatures
    lists, expected = [], []
    for user, n in ((0, 4), (3, 2)):
        user_row = {k: v[user:user + 1] for k, v in rows.items() if k != F.ITEM_ID}
        listed = input_pb2.ExampleListWithContext()
        listed.context.ParseFromString(F.to_examples(user_row)[0])
        for item in rows[F.ITEM_ID][:n]:
            listed.examples.add().features.feature[F.ITEM_ID].int64_list.value.append(item)
        lists.append(listed.SerializeToString())
        flat = {k: np.repeat(v, n, axis=0) for k, v in user_row.items()}
        flat[F.ITEM_ID] = rows[F.ITEM_ID][:n]
        expected.append(signatures["serving_default"](
            examples=tf.constant(F.to_examples(flat)))["scores"].numpy())
    scores = signatures["serving_context"](
        example_list_with_context=tf.constant(lists))["scores"].numpy()
    assert scores.shape == (2, 4)
    np.testing.assert_allclose(scores[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(scores[1, :2], expected[1], atol=1e-5)
    np.testing.assert_array_equal(scores[1, 2:], 0.0)
    # a user-side feature in a candidate example is refused, naming it
    bad = input_pb2.ExampleListWithContext.FromString(lists[1])
    bad.examples[0].features.feature[F.USER_ID].int64_list.value.append(3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature user_id belongs in the context"):
        signatures["serving_context"](example_list_with_context=tf.constant(
            [bad.SerializeToString()]))
