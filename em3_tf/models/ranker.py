"""The EM3 ranking model: a `tfrs.Model` with a `tfrs.tasks.Ranking` task."""

from typing import Dict, Optional

import numpy as np

from em3_tf import features as F
from em3_tf._tf import float32_policy, keras, tf, tfrs
from em3_tf.catalog import ItemCatalog
from em3_tf.config import EM3Config
from em3_tf.layers.codebook_retrieval import CodebookRetrieval, RefitCodebooks
from em3_tf.layers.content_encoder import ItemContentEncoder
from em3_tf.layers.content_table import ContentTable
from em3_tf.layers.feedback import FeedbackEmbedding, user_statistics
from em3_tf.layers.semantic_ids import SemanticIds
from em3_tf.layers.target_attention import TargetAttention
from em3_tf.quantization.alignment import item_codes
from em3_tf.tasks.cic import ContentIdContrastive


class _IdEmbedding(keras.layers.Layer):
    """`IntegerLookup` with OOV buckets followed by an `Embedding`: raw id -> vector.

    Rows `0 .. num_oov_buckets - 1` are the "unknown" rows. In training, a share `id_dropout`
    of the ids is sent to them (bucket `id mod num_oov_buckets`), so they learn what an
    unseen id should look like instead of staying at their random initial values.
    """

    def __init__(self, vocabulary, dim, num_oov_buckets, id_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_oov_buckets, self.id_dropout = int(num_oov_buckets), float(id_dropout)
        self.lookup = keras.layers.IntegerLookup(
            vocabulary=F.keys_of(vocabulary), num_oov_indices=num_oov_buckets,
            mask_token=None)
        self.embedding = keras.layers.Embedding(len(vocabulary) + num_oov_buckets, dim)

    def call(self, ids, training=False):
        index = self.lookup(ids)
        if training and self.id_dropout > 0:
            unknown = tf.math.floormod(tf.cast(ids, index.dtype), self.num_oov_buckets)
            drop = tf.random.uniform(tf.shape(index)) < self.id_dropout
            index = tf.where(drop, unknown, index)
        return self.embedding(index)


class EM3Ranker(tfrs.Model):
    """EM3: End-to-end training of Multimodal Model and ranking Model.

    The tower concatenates, for one (user, candidate item) example:
      - user, item and context ID embeddings (unseen ids share OOV buckets, trained through
        `id_dropout`);
      - the user's running statistics (`use_feedback`): log count and smoothed positive rate
        of all earlier interactions;
      - DIN target attention of the history's item ID embeddings against the item's
        (`use_id_sequence`); with `use_feedback`, each entry's feedback embedding (label,
        rating, elapsed time) is added to it first, so the attention is label-aware;
      - the candidate's content embedding from the item catalog (`content_encoder`), trained
        end to end with the ranking loss;
      - the user's content interest: target attention of the history's content embeddings
        against the candidate's (`history_content`: LoRA branch, full, or frozen cache), with
        feedback embeddings added in the same way;
    and feeds them to `tfrs.layers.dcn.Cross` layers and an MLP giving one click logit.
    The loss is binary cross-entropy (`tfrs.tasks.Ranking`, with AUC and log-loss metrics)
    plus `cic_weight` times the Content-ID-Contrastive loss.

    Args:
      config: `EM3Config`.
      vocabularies: `{feature: 1-D array}` of known ids (int64, or str for a data set with
        string ids) for `user_id`, `item_id` and each context feature (usually the ids seen in
        training).
      catalog: `ItemCatalog`; required with item content or semantic ids.
      semantic_codes: int `[N, semantic_id_levels]` RQ codes of the catalog's items (see
        `em3_tf.quantization.alignment.item_codes`); required for the co-engagement-aligned
        source (`build_ranker` computes them), computed here for `"content"`.

    Inputs: a dict of raw features (see `em3_tf.features`): `user_id [B]`, `item_id [B]`,
    `history_item_ids [B, L]` (`-1` or `""` padded, most recent first), with `use_feedback` also the
    aligned `history_labels`, `history_ratings`, `history_seconds_ago [B, L]` and
    `user_prior_count`, `user_prior_positives [B]`; context features `[B]`, and `label [B]`
    for training. `call` returns click probabilities `[B]`.

    Example:
    >>> model = EM3Ranker(EM3Config.preset("em3"), vocabularies, catalog)
    >>> model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    >>> model.fit(train_ds, validation_data=eval_ds, epochs=3)
    """

    def __init__(self, config: EM3Config, vocabularies: Dict[str, np.ndarray],
                 catalog: Optional[ItemCatalog] = None, semantic_codes=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        needed = F.scalar_features(config.context_features)
        missing = [n for n in needed if n not in vocabularies or len(vocabularies[n]) == 0]
        if missing:
            raise ValueError(f"`vocabularies` lacks a non-empty vocabulary for {missing}.")
        if (config.uses_content or config.semantic_id_levels) and catalog is None:
            raise ValueError("Item content and semantic ids need a `catalog`.")
        dim, oov = config.id_embedding_dim, config.num_oov_buckets
        self.id_embeddings = {
            name: _IdEmbedding(vocabularies[name], dim, oov,
                               config.id_dropout if name in (F.USER_ID, F.ITEM_ID) else 0.0,
                               name=f"{name}_emb")
            for name in needed if name != F.ITEM_ID or config.use_item_id}
        self.item_vocabulary = tf.constant(F.keys_of(vocabularies[F.ITEM_ID]))
        self.string_ids = F.is_string(vocabularies[F.ITEM_ID])  # what the signatures parse
        if config.use_id_sequence:
            self.id_attention = TargetAttention(name="id_sequence_attention")
            if config.use_feedback:
                self.id_feedback = FeedbackEmbedding(dim, config.max_rating,
                                                     name="id_sequence_feedback")
        self.semantic_ids = None
        if config.semantic_id_levels:
            if semantic_codes is None and config.semantic_id_source != "content":
                raise ValueError(f"`semantic_id_source='{config.semantic_id_source}'` needs "
                                 "`semantic_codes` (`em3_tf.quantization.alignment.item_codes`"
                                 " from the training interactions or the first stage; "
                                 "`build_ranker` computes them).")
            if semantic_codes is None:
                semantic_codes = item_codes(catalog, config.semantic_id_levels,
                                            config.semantic_id_codebook, "content")
            self.semantic_ids = SemanticIds(F.keys_of(catalog.item_ids), semantic_codes,
                                            config.semantic_id_codebook, dim,
                                            name="semantic_ids")
        self.content = self.retrieval = None
        self.content_table: Optional[ContentTable] = None  # made by `attach_content_table`
        if config.uses_content:
            self.content = ItemContentEncoder(
                catalog, kind=config.content_encoder, output_dim=config.content_dim,
                qformer_kwargs=dict(
                    num_queries=config.num_queries, num_layers=config.num_layers,
                    width=config.width, num_heads=config.num_heads, attention=config.attention,
                    ffn_multiplier=config.ffn_multiplier,
                    lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                    lora_scope=config.lora_scope),
                token_dim=config.token_dim, max_tokens=config.max_tokens,
                modality_dropout=config.modality_dropout, name="item_content")
            if config.history_content != "none":
                self.content_attention = TargetAttention(scorer=config.content_attention,
                                                         name="content_interest_attention")
                if config.use_feedback:
                    self.content_feedback = FeedbackEmbedding(
                        config.content_dim, config.max_rating, name="content_interest_feedback")
            if config.history_retrieval_k:
                with float32_policy():  # PQ tables and scores in float32 under mixed precision
                    self.retrieval = CodebookRetrieval(
                        self.content.num_rows, config.content_dim, config.history_retrieval_k,
                        config.pq_subspaces, config.pq_centroids, name="codebook_retrieval")
            if config.history_content == "cache":
                self.content_cache = tf.Variable(
                    tf.zeros([self.content.num_rows, config.content_dim]), trainable=False,
                    name="content_cache")
            if config.cic_weight > 0:
                self.cic = ContentIdContrastive(config.content_dim, config.cic_temperature,
                                                name="cic")
                self.cic_loss_tracker = keras.metrics.Mean(name="cic_loss")
        self.cross_layers = [tfrs.layers.dcn.Cross(name=f"cross_{i}")
                             for i in range(config.num_cross_layers)]
        self.mlp = keras.Sequential(
            [layer for units in config.mlp_units
             for layer in (keras.layers.Dense(units, activation="relu"),
                           keras.layers.Dropout(config.dropout))], name="mlp")
        self.logit = keras.layers.Dense(1, name="logit")
        with float32_policy():
            self.task = tfrs.tasks.Ranking(
                loss=keras.losses.BinaryCrossentropy(from_logits=True,
                                                     reduction=keras.losses.Reduction.SUM),
                metrics=[keras.metrics.AUC(name="auc", from_logits=True),
                         keras.metrics.BinaryCrossentropy(name="logloss", from_logits=True)])

    # Forward pass -------------------------------------------------------------------------

    def _inputs(self, features, with_label=False):
        return F.check_features(features, self.config.context_features, with_label,
                                self.config.max_history_len, self.config.dense_features,
                                feedback=self.config.use_feedback, string_ids=self.string_ids)

    def _with_feedback(self, layer_name, history, inputs):
        """`history [B, L, D]` plus the entries' feedback embeddings when `use_feedback`."""
        if not self.config.use_feedback:
            return history
        feedback = getattr(self, layer_name)(*(inputs[n] for n in F.FEEDBACK_SEQUENCES))
        return history + tf.cast(feedback, history.dtype)

    def _history_content(self, history, training):
        """Content embeddings `[B, L, content_dim]` of the history items."""
        rows = self.content.rows_of(history)
        if self.config.history_content == "cache":
            return tf.gather(self.content_cache, rows)
        flat = tf.reshape(rows, [-1])
        adapter = self.config.history_content == "lora"
        if self.config.dedupe_history:
            unique, index = tf.unique(flat)
            embeddings = tf.gather(self.content(unique, training=training, adapter=adapter), index)
        else:
            embeddings = self.content(flat, training=training, adapter=adapter)
        return self._per_entry(embeddings, rows)

    def _per_entry(self, embeddings, rows):
        """`embeddings [n, content_dim]` of the entries of `rows` (any shape, `n` entries in
        all), reshaped to `rows`' shape plus `[content_dim]`."""
        return tf.reshape(embeddings, tf.concat([tf.shape(rows), [self.config.content_dim]], 0))

    def _content_of(self, ids, branch, table, training):
        """Content embeddings of `ids` (`[B]` targets or `[B, L]` history) from `table` when
        given, else from the live encoder."""
        if table is not None:
            return tf.cast(table(ids, branch), self.content.compute_dtype)
        if branch == "target":
            return self.content(self.content.rows_of(ids), training=training)
        return self._history_content(ids, training)

    def _shares_fusion(self):
        """Whether candidates and history items share one Q-Former pass (`share_fusion`)."""
        c = self.config
        return (c.share_fusion and c.dedupe_history and c.history_content == "lora"
                and self.retrieval is None and self.content.shares_fusion)

    def _item_content(self, item_ids, history, table, training):
        """`(target [B, content_dim], history [..., L, content_dim] or None)`: the candidates'
        content embeddings and, for the content attention over the whole history, the
        history branch's (None without a history branch, or with retrieval, which encodes
        only the entries it keeps). With `share_fusion` (and no `table`), both come from one
        fusion pass per distinct item (`ItemContentEncoder.encode_branches`)."""
        if table is None and self._shares_fusion():
            rows = self.content.rows_of(history)
            target, entries = self.content(self.content.rows_of(item_ids), training=training,
                                           history_rows=tf.reshape(rows, [-1]))
            return target, self._per_entry(entries, rows)
        target = self._content_of(item_ids, "target", table, training)
        if self.config.history_content == "none" or self.retrieval is not None:
            return target, None
        return target, self._content_of(history, "history", table, training)

    def _forward(self, inputs, training, table: Optional[ContentTable] = None,
                 user_index=None):
        """Returns `(logits [B], parts)`, parts holding what the CIC loss needs; with a
        content `table`, item content is read from it instead of encoded.

        With `user_index` (int `[B]`), every input but `item_id` holds `U` users' rows and
        candidate `b` belongs to user `user_index[b]`: user-side embeddings, feedback and
        history content are computed once per user, not once per candidate.
        """
        def per_candidate(x):
            return x if user_index is None else tf.gather(x, user_index)

        history = inputs[F.HISTORY]
        mask = tf.not_equal(history, F.PAD_ID)
        embedded = {name: layer(inputs[name], training=training)
                    for name, layer in self.id_embeddings.items()}
        tower = [v if name == F.ITEM_ID else per_candidate(v) for name, v in embedded.items()]
        tower += [per_candidate(inputs[name])[:, None] for name in self.config.dense_features]
        if self.config.use_feedback:
            tower.append(per_candidate(user_statistics(
                inputs[F.USER_COUNT], inputs[F.USER_POSITIVES],
                self.config.feedback_prior_rate, self.config.feedback_prior_count)))
        item_emb = embedded.get(F.ITEM_ID)
        if self.semantic_ids is not None:
            tower.extend(self.semantic_ids(inputs[F.ITEM_ID], history, mask, user_index))
        if self.config.use_id_sequence:
            history_ids = self.id_embeddings[F.ITEM_ID](history, training=training)
            history_ids = self._with_feedback("id_feedback", history_ids, inputs)
            tower.append(self.id_attention(item_emb, history_ids, mask, user_index))
        content = None
        if self.content is not None:
            content, history_content = self._item_content(inputs[F.ITEM_ID], history, table,
                                                          training)
            tower.append(content)
            if history_content is not None:
                history_content = self._with_feedback("content_feedback", history_content,
                                                      inputs)
                tower.append(self.content_attention(content, history_content, mask,
                                                    user_index))
            elif self.retrieval is not None:
                tower.append(self._retrieved_interest(content, inputs, table, training,
                                                      per_candidate))
        x0 = tf.concat([tf.cast(t, self.compute_dtype) for t in tower], axis=-1)
        x = x0
        for cross in self.cross_layers:
            x = cross(x0, x)
        logits = tf.cast(self.logit(self.mlp(x, training=training))[:, 0], tf.float32)
        return logits, {"content": content, "item_embedding": item_emb}

    def _retrieved_interest(self, content, inputs, table, training, per_candidate):
        """The content attention over the `history_retrieval_k` history items that codebook
        retrieval finds most relevant to each target (per candidate: relevance depends on
        the target)."""
        sequences = {name: per_candidate(inputs[name]) for name in F.SEQUENCES
                     if name in inputs}
        positions = self.retrieve(content, sequences)
        kept = {name: tf.gather(x, positions, batch_dims=1) for name, x in sequences.items()}
        history_content = self._with_feedback(
            "content_feedback", self._content_of(kept[F.HISTORY], "history", table, training),
            kept)
        return self.content_attention(content, history_content,
                                      tf.not_equal(kept[F.HISTORY], F.PAD_ID))

    def retrieve(self, content, sequences):
        """Positions `[B, K]` of the history entries with the highest estimated content-
        attention logits against targets with content `[B, content_dim]`: PQ codes of the
        items' attention keys, plus the exact key of each entry's feedback.

        `sequences` holds `history` `[B, L]` and, with `use_feedback`, the feedback
        sequences."""
        history = sequences[F.HISTORY]
        query = self.content_attention.queries(tf.cast(content, tf.float32))
        bias = None
        if self.config.use_feedback:
            feedback = self.content_feedback(*(sequences[n] for n in F.FEEDBACK_SEQUENCES))
            keys = self.content_attention.keys(tf.cast(feedback, tf.float32))
            bias = tf.einsum("bk,blk->bl", query, keys)
        positions, _ = self.retrieval(query, self.content.rows_of(history),
                                      tf.not_equal(history, F.PAD_ID), bias)
        return positions

    def content_logits(self, content, sequences):
        """The content attention's exact logits `[B, L]` of every history entry (feedback
        included) against targets with content `[B, content_dim]`: what `retrieve`
        estimates. `sequences` as in `retrieve`."""
        history = sequences[F.HISTORY]
        entries = self._with_feedback("content_feedback",
                                      self._history_content(history, False), sequences)
        logits, _, _ = self.content_attention.scores(content, entries,
                                                     tf.not_equal(history, F.PAD_ID))
        return logits

    def refit_codebooks(self, batch_size=1024):
        """Refits the retrieval's PQ codebooks on every catalog item's current attention key
        (the content attention's `keys` of its history-branch content embedding)."""
        if self.retrieval is None:
            raise ValueError("refit_codebooks needs `history_retrieval_k` >= 1.")
        adapter = self.config.history_content == "lora"
        embeddings = self.content.encode_all(batch_size, adapter=adapter)
        self.retrieval.fit(self.content_attention.keys(tf.cast(embeddings, tf.float32)))

    def call(self, features, training=False):
        logits, _ = self._forward(self._inputs(features), training)
        return tf.sigmoid(logits)

    def serve(self, features, user_index=None):
        """Click probabilities `[B]` as `call` gives them at inference, but with item content
        read from `content_table` when one is attached (what the exported signatures run).

        With `user_index` (int `[B]`), every feature but `item_id` holds one row per user and
        candidate `b` is scored for user `user_index[b]` (see `_forward`): the
        `serving_context` signature's one-user, many-candidates requests."""
        logits, _ = self._forward(self._inputs(features), False, self.content_table,
                                  user_index)
        return tf.sigmoid(logits)

    def in_catalog(self, item_ids) -> tf.Tensor:
        """Whether the model knows each item (bool, `item_ids`' shape; ids raw or keys): a
        row of the content table (or catalog), or, for an ID-only model, a training id. An
        unknown item is still scored, as the OOV item; the signatures report it beside the
        score so that a caller can warn or refuse."""
        keys = F.id_keys(item_ids)
        if self.content_table is not None:
            return self.content_table.rows_of(keys) > 0
        if self.content is not None:
            return self.content.rows_of(keys) > 0
        if not self.config.use_item_id:
            return self.semantic_ids.lookup(keys) > 0
        embedding = self.id_embeddings[F.ITEM_ID]
        return embedding.lookup(keys) >= embedding.num_oov_buckets

    def encode_items(self, tokens, masks) -> Dict[str, tf.Tensor]:
        """`{"target", "history"}` content embeddings `[n, content_dim]` of items given by
        their token features (see `ItemContentEncoder.encode_tokens`), as
        `attach_content_table` computes them for catalog items ("history" only with a
        history branch)."""
        target = tf.cast(self.content.encode_tokens(tokens, masks), tf.float32)
        mode = self.config.history_content
        if mode == "none":
            return {"target": target}
        history = (tf.cast(self.content.encode_tokens(tokens, masks, adapter=True), tf.float32)
                   if mode == "lora" else target)  # 'full' and 'cache' use the target encoder
        return {"target": target, "history": history}

    def attach_content_table(self, batch_size=1024) -> Optional[ContentTable]:
        """Computes every catalog item's content embedding of both branches with the current
        weights into `content_table` (created, or refreshed in place); None without content.

        The target branch is the encoder at inference; the history branch is the LoRA
        adapter's output (`history_content='lora'`), the encoder's (`'full'`) or the frozen
        cache (`'cache'`).
        """
        if self.content is None:
            return None
        self.sync_content_cache()
        target = self.content.encode_all(batch_size).numpy()
        mode = self.config.history_content
        history = (None if mode == "none" else self.content_cache.numpy() if mode == "cache"
                   else self.content.encode_all(batch_size, adapter=mode == "lora").numpy())
        ids = self.content.catalog_item_ids
        if self.content_table is None:
            self.content_table = ContentTable(ids, target, history, name="content_table")
        else:
            self.content_table.assign(ids, target, history)
        return self.content_table

    # Training -----------------------------------------------------------------------------

    def train_step(self, inputs):
        """`tfrs.Model.train_step` with loss scaling: under a `mixed_float16` policy Keras
        wraps the optimizer in a `LossScaleOptimizer`, and the loss (kept in float32) is
        scaled before the gradients and the gradients unscaled after, so small float16
        gradients do not underflow to zero."""
        optimizer = self.optimizer
        scaling = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(x) for x in self.losses])
            total_loss = loss + regularization_loss
            scaled = optimizer.get_scaled_loss(total_loss) if scaling else total_loss
        gradients = tape.gradient(scaled, self.trainable_variables)
        if scaling:
            gradients = optimizer.get_unscaled_gradients(gradients)
        optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        metrics = {metric.name: metric.result() for metric in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss,
                       total_loss=total_loss)
        return metrics

    def compute_loss(self, features, training=False):
        inputs = self._inputs(features, with_label=True)
        logits, parts = self._forward(inputs, training)
        labels = tf.cast(inputs[F.LABEL], tf.float32)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
        loss = self.task(labels[:, None], logits[:, None], training=training) / global_batch
        if self.config.cic_weight > 0:
            cic_loss = self._cic_loss(inputs[F.ITEM_ID], parts, training, global_batch)
            self.cic_loss_tracker.update_state(cic_loss)
            loss += self.config.cic_weight * cic_loss
        return loss

    def _cic_loss(self, item_ids, parts, training, global_batch):
        negatives = {}
        k = self.config.cic_num_negatives
        if k > 0:
            pick = tf.random.uniform([k], 0, tf.shape(self.item_vocabulary)[0], tf.int32)
            negative_ids = tf.gather(self.item_vocabulary, pick)
            negatives = dict(
                negative_item_ids=negative_ids,
                negative_content=self.content(self.content.rows_of(negative_ids),
                                              training=training),
                negative_ids=self.id_embeddings[F.ITEM_ID](negative_ids))
        return self.cic(parts["content"], parts["item_embedding"], item_ids,
                        global_batch_size=global_batch, **negatives)

    # Content cache ------------------------------------------------------------------------

    def refresh_content_cache(self, batch_size=1024):
        """Re-encodes every catalog item into the frozen history cache (`history_content='cache'`)."""
        if self.config.history_content != "cache":
            raise ValueError("refresh_content_cache needs `history_content='cache'`.")
        self.content_cache.assign(self.content.encode_all(batch_size))

    def sync_content_cache(self):
        """Brings the history cache (if any) up to date with the current weights.

        Called before every evaluation, prediction and export, so no stale cache is ever
        scored; in training the cache is refreshed at each epoch start (`RefreshContentCache`).
        """
        if self.config.history_content == "cache":
            self.refresh_content_cache()
        if self.retrieval is not None:
            self.refit_codebooks()

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with `RefreshContentCache` added (last) for a cached history."""
        callbacks = list(callbacks or [])
        if self.config.history_content == "cache" and not any(
                isinstance(c, RefreshContentCache) for c in callbacks):
            callbacks.append(RefreshContentCache())
        if self.retrieval is not None and not any(
                isinstance(c, RefitCodebooks) for c in callbacks):
            callbacks.insert(0, RefitCodebooks(self.config.pq_refit_epochs))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, **kwargs):  # also runs fit's validation
        self.sync_content_cache()
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self.sync_content_cache()
        return super().predict(*args, **kwargs)

    def get_config(self):
        return {"config": self.config.get_config()}


class RefreshContentCache(keras.callbacks.Callback):
    """Refreshes `EM3Ranker`'s frozen history content cache at each epoch start and when
    training ends (after `EarlyStopping` restored the best weights: list it after that).
    `EM3Ranker.fit` adds it by itself when it is not in the callbacks."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.sync_content_cache()

    def on_train_end(self, logs=None):
        self.model.sync_content_cache()
