"""One configuration object for every EM3 ranker variant.

`EM3Config` is a plain, JSON-serialisable dataclass. The benchmark variants are presets:

Each preset changes one factor from `em3`, so a table of them reads as ablations. Every
preset reads the same inputs (ids, context, feedback sequences, user statistics); "feedback"
says whether the model uses the feedback. Every preset with item content reads the catalog's
tokens through the same frozen reduction (`token_dim=64`, `max_tokens=8`); the frozen and
concat-MLP encoders pool those same reduced tokens. `em3_full_cost` is EM3 without its two
cost levers (raw tokens, LoRA adapters in every Q-Former projection): the one row that
changes two things, to show what the levers cost in quality. Beyond EM3 (QARM): `em3_sid` is
EM3 plus semantic-id features (3 levels of RQ-KMeans codes of the co-engagement-aligned
content, `em3_tf.layers.semantic_ids`); `em3_sid_own` quantizes EM3's own trained content
embeddings instead (two-stage: EM3 without codes first, see `EM3Config.first_stage`);
`sid_dcn` is the ID-only DCN with the codes in place of the item id. `em3_pq` (SEMINAR) runs
the LoRA history branch over the 50 history items that product-quantized attention keys
retrieve (`em3_tf.layers.codebook_retrieval`), for long histories; it changes two things, since
its content attention must score with the dot product that the retrieval estimates
(`bench_long_history` separates the two).

| preset                  | item content encoder          | history content              | CIC | ID seq. | feedback |
|-------------------------|-------------------------------|------------------------------|-----|---------|----------|
| `em3`                   | Fusion-Q-Former               | Q-Former + LoRA on its output| yes | yes     | yes      |
| `em3_full_cost`         | Fusion-Q-Former, raw tokens   | Q-Former, LoRA everywhere    | yes | yes     | yes      |
| `id_dcn`                | none                          | none                         | no  | no      | yes (statistics) |
| `id_din`                | none                          | none                         | no  | yes     | yes      |
| `frozen_content`        | frozen pooled tokens + proj.  | the same, live               | yes | yes     | yes      |
| `frozen_content_no_cic` | frozen pooled tokens + proj.  | the same, live               | no  | yes     | yes      |
| `em3_no_qformer`        | concat + MLP                  | concat + MLP, fully trained  | yes | yes     | yes      |
| `em3_no_lora`           | Fusion-Q-Former               | Q-Former, fully trained      | yes | yes     | yes      |
| `em3_no_cic`            | Fusion-Q-Former               | Q-Former + LoRA on its output| no  | yes     | yes      |
| `em3_no_feedback`       | Fusion-Q-Former               | Q-Former + LoRA on its output| yes | yes     | no       |
| `em3_cached`            | Fusion-Q-Former               | frozen cache, per epoch      | yes | yes     | yes      |
| `em3_sid`               | Fusion-Q-Former               | Q-Former + LoRA on its output| yes | yes     | yes      |
| `em3_sid_own`           | Fusion-Q-Former               | Q-Former + LoRA on its output| yes | yes     | yes      |
| `em3_pq`                | Fusion-Q-Former               | LoRA over the top-50 by PQ, dot attention | yes | yes | yes |
| `sid_dcn`               | none                          | none                         | no  | no      | yes      |
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Tuple

CONTENT_ENCODERS = ("none", "qformer", "concat_mlp", "frozen")
LR_SCHEDULES = ("constant", "cosine")
LORA_SCOPES = ("all", "output")
# what semantic ids quantize (em3_tf.quantization.alignment)
SOURCES = ("content", "aligned", "em3")
MAX_LEVELS = 8  # semantic-id code levels
HISTORY_MODES = ("none", "lora", "full", "cache")
ATTENTION_MODES = ("joint", "cross")
SCORERS = ("mlp", "dot")  # target-attention scorers (em3_tf.layers.target_attention)


@dataclasses.dataclass(frozen=True)
class EM3Config:
    """Hyper-parameters and switches of `EM3Ranker`.

    Attributes:
      content_encoder: how an item's content tokens become one embedding: `"qformer"` (the
        Fusion-Q-Former, trained end to end), `"concat_mlp"` (masked mean per modality,
        concatenated, MLP; the "without Q-Former" ablation), `"frozen"` (masked mean per
        modality, concatenated, no trainable extractor: pre-extracted content), `"none"`.
      history_content: how history items' content embeddings are made: `"lora"` (the same
        content encoder, base weights stop-gradient, only LoRA adapters train), `"full"`
        (same encoder, fully trained), `"cache"` (a non-trainable table of the encoder's
        embeddings for every catalog item, refreshed by `RefreshContentCache`), `"none"`.
      use_id_sequence: DIN-style target attention over history item ID embeddings.
      cic_weight: weight of the Content-ID-Contrastive loss; 0 disables it.
      cic_temperature: InfoNCE temperature.
      cic_num_negatives: extra uniformly sampled catalog negatives per batch (0: in-batch only).
      num_queries, num_layers, width, num_heads, attention, ffn_multiplier: Fusion-Q-Former shape.
      modality_dropout: per-example probability of dropping each modality in training, in
        every content encoder (the Q-Former masks its tokens, the pooled encoders zero its
        pooled vector).
      token_dim, max_tokens: a frozen reduction of the catalog's token features before the
        content encoder (`TokenReduction`): PCA of each token to `token_dim` dims, and each
        modality's tokens mean-pooled into at most `max_tokens` segments; 0 keeps them.
      content_dim: size of the item content embedding.
      lora_rank, lora_alpha: LoRA adapter rank and scale numerator (scale = alpha / rank).
      lora_scope: which Q-Former projections carry the history branch's adapters: `"all"`,
        or `"output"` (the output projection only: the branch then runs the Q-Former forward
        only, without a backward pass through it).
      id_embedding_dim: size of user/item/context ID embeddings.
      num_oov_buckets: out-of-vocabulary buckets of each ID lookup.
      max_history_len: history length the model reads (longer inputs are cut, most recent kept).
      dedupe_history: encode each distinct history item once per batch.
      share_fusion: with `dedupe_history` and the LoRA-output history branch
        (`history_content="lora"`, `lora_scope="output"`, no history retrieval), fuse each
        distinct item of a batch once for both branches: candidates and history items share
        one Q-Former pass (`ItemContentEncoder.encode_branches`), and repeated candidates
        one. The forward values and gradients are the same, except that an item fused once
        gets one modality-dropout draw for all its uses. Other configs ignore it. Off by
        default so that runs recorded before it existed stay valid; on in `em3`.
      num_cross_layers: `tfrs.layers.dcn.Cross` layers.
      mlp_units: hidden sizes of the MLP after the cross layers.
      dropout: dropout rate in the MLP.
      use_feedback: read the history's feedback (labels, ratings, elapsed time; embedded and
        added to the entries of both target attentions) and the user's running statistics
        (dense `log(1 + count)` and smoothed positive rate).
      feedback_prior_rate, feedback_prior_count: the smoothing prior of the positive rate.
      max_rating: ratings above are clipped (their embedding has `max_rating + 1` rows).
      id_dropout: share of training ids (user, item, history items) replaced by the OOV bucket,
        so the "unknown" rows that unseen users and items get at serving time are trained.
      learning_rate: peak Adam learning rate.
      lr_schedule: `"constant"` or `"cosine"` (linear warm-up over `warmup_fraction` of the
        steps, then cosine decay to zero over the planned steps).
      warmup_fraction: share of the planned steps spent warming up (cosine schedule).
      content_lr_scale: learning rate of the content encoder's weights (Q-Former, projections)
        relative to the rest.
      context_features: names of extra categorical features with ID embeddings.
      dense_features: names of float features `[B]` fed to the tower as they are (e.g. the
        TFX Transform's normalised `history_length_z`).
      semantic_id_levels, semantic_id_codebook, semantic_id_source: QARM codes as features:
        levels of RQ-KMeans codes (0: none), centroids per level, and what is quantized:
        the frozen `"content"` features; `"aligned"`, trained on co-engagement pairs; or
        `"em3"`, the content embeddings of this model trained without codes first (two-stage
        training, see `first_stage`; needs a content encoder).
      use_item_id: read the item id embedding (False: the codes stand in for it).
      history_retrieval_k: SEMINAR retrieval: the content attention runs over the K history
        items whose PQ-estimated attention logits are highest (0: over the whole history).
      pq_subspaces, pq_centroids, pq_refit_epochs: the retrieval's product quantizer (M
        sub-spaces x C centroids of the attention keys) and how often, in epochs, it is refit.
      content_attention: scorer of the content attention, `"mlp"` (DIN) or `"dot"` (scaled
        dot product; the one retrieval needs, since PQ estimates inner products).
    """

    content_encoder: str = "qformer"
    history_content: str = "lora"
    use_id_sequence: bool = True
    cic_weight: float = 0.1
    cic_temperature: float = 0.1
    cic_num_negatives: int = 0
    num_queries: int = 2
    num_layers: int = 1
    width: int = 64
    num_heads: int = 4
    attention: str = "joint"
    ffn_multiplier: int = 2
    modality_dropout: float = 0.1
    token_dim: int = 0
    max_tokens: int = 0
    content_dim: int = 32
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_scope: str = "all"
    id_embedding_dim: int = 32
    num_oov_buckets: int = 1
    max_history_len: int = 50
    dedupe_history: bool = True
    share_fusion: bool = False
    num_cross_layers: int = 2
    mlp_units: Tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    use_feedback: bool = True
    feedback_prior_rate: float = 0.5
    feedback_prior_count: float = 5.0
    max_rating: int = 10
    id_dropout: float = 0.0
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.05
    content_lr_scale: float = 1.0
    context_features: Tuple[str, ...] = ()
    dense_features: Tuple[str, ...] = ()
    semantic_id_levels: int = 0
    semantic_id_codebook: int = 64
    semantic_id_source: str = "aligned"
    use_item_id: bool = True
    history_retrieval_k: int = 0
    pq_subspaces: int = 16
    pq_centroids: int = 256
    pq_refit_epochs: int = 1
    content_attention: str = "mlp"

    def __post_init__(self):
        _one_of("content_encoder", self.content_encoder, CONTENT_ENCODERS)
        _one_of("history_content", self.history_content, HISTORY_MODES)
        _one_of("attention", self.attention, ATTENTION_MODES)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("lora_scope", self.lora_scope, LORA_SCOPES)
        _one_of("content_attention", self.content_attention, SCORERS)
        for name in ("num_queries", "num_layers", "width", "num_heads", "content_dim",
                     "lora_rank", "id_embedding_dim", "num_oov_buckets", "max_history_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)!r}.")
        if self.width % self.num_heads:
            raise ValueError(
                f"`width` ({self.width}) must be divisible by `num_heads` ({self.num_heads}).")
        for name in ("token_dim", "max_tokens"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0: no reduction), got "
                                 f"{getattr(self, name)!r}.")
        for name in ("modality_dropout", "dropout", "id_dropout", "warmup_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)!r}.")
        if self.cic_weight < 0 or self.cic_temperature <= 0 or self.cic_num_negatives < 0:
            raise ValueError("`cic_weight` and `cic_num_negatives` must be >= 0 and "
                             "`cic_temperature` > 0.")
        if self.content_encoder == "none" and (
                self.history_content != "none" or self.cic_weight > 0):
            raise ValueError("`content_encoder='none'` needs `history_content='none'` and "
                             "`cic_weight=0`.")
        if self.content_encoder in ("frozen", "concat_mlp") and self.history_content == "lora":
            raise ValueError(f"`history_content='lora'` needs the Q-Former; with "
                             f"`content_encoder='{self.content_encoder}'` use 'full' or 'cache'.")
        for name in ("learning_rate", "content_lr_scale", "feedback_prior_count"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        if not 0 < self.feedback_prior_rate < 1 or self.max_rating < 0:
            raise ValueError(f"`max_rating` must be >= 0 and `feedback_prior_rate` in (0, 1); "
                             f"got {self.max_rating!r}, {self.feedback_prior_rate!r}.")
        if not 0 <= int(self.semantic_id_levels) <= MAX_LEVELS:
            raise ValueError(f"`semantic_id_levels` must be in [0, {MAX_LEVELS}] (0: no "
                             f"semantic ids), got {self.semantic_id_levels!r}.")
        if int(self.semantic_id_codebook) < 2:
            raise ValueError(f"`semantic_id_codebook` must be >= 2, got "
                             f"{self.semantic_id_codebook!r}.")
        _one_of("semantic_id_source", self.semantic_id_source, SOURCES)
        if self.semantic_id_source == "em3" and self.semantic_id_levels and not self.uses_content:
            raise ValueError("`semantic_id_source='em3'` quantizes the model's own trained "
                             "content embeddings: it needs a `content_encoder`, got 'none'.")
        if not self.use_item_id and not self.semantic_id_levels:
            raise ValueError("`use_item_id=False` needs semantic ids (`semantic_id_levels` "
                             ">= 1): the model would have no item identity.")
        if not self.use_item_id and (self.use_id_sequence or self.cic_weight > 0):
            raise ValueError("`use_item_id=False` needs `use_id_sequence=False` and "
                             "`cic_weight=0` (both read the item id embedding).")
        if self.history_retrieval_k:
            if not 1 <= int(self.history_retrieval_k) <= int(self.max_history_len):
                raise ValueError(f"`history_retrieval_k` (K={self.history_retrieval_k}) must "
                                 f"be in [1, max_history_len (L={self.max_history_len})].")
            if self.history_content not in ("lora", "full"):
                raise ValueError("`history_retrieval_k` needs a live history content branch "
                                 f"('lora' or 'full'), got {self.history_content!r}.")
            if self.content_attention != "dot":
                raise ValueError("`history_retrieval_k` needs `content_attention='dot'`: "
                                 "retrieval ranks history items by PQ estimates of the "
                                 "attention's logits, which only the dot scorer has (got "
                                 f"{self.content_attention!r}).")
            if self.content_dim % self.pq_subspaces or self.pq_refit_epochs < 1:
                raise ValueError(f"`content_dim` ({self.content_dim}) must be divisible by "
                                 f"`pq_subspaces` ({self.pq_subspaces}), and "
                                 f"`pq_refit_epochs` >= 1.")
        object.__setattr__(self, "mlp_units", tuple(int(u) for u in self.mlp_units))
        object.__setattr__(self, "context_features", tuple(self.context_features))
        object.__setattr__(self, "dense_features", tuple(self.dense_features))

    @property
    def uses_content(self) -> bool:
        return self.content_encoder != "none"

    @property
    def two_stage(self) -> bool:
        """Whether training starts with `first_stage` (`semantic_id_source='em3'` codes)."""
        return bool(self.semantic_id_levels) and self.semantic_id_source == "em3"

    def first_stage(self) -> "EM3Config":
        """The first stage of a two-stage training: this config without semantic ids. Its
        trained content embeddings are what `semantic_id_source='em3'` quantizes."""
        return self.replace(semantic_id_levels=0, semantic_id_source="aligned",
                            use_item_id=True)

    def replace(self, **changes) -> "EM3Config":
        return dataclasses.replace(self, **changes)

    def get_config(self) -> Dict[str, Any]:
        config = dataclasses.asdict(self)
        config["mlp_units"] = list(self.mlp_units)
        config["context_features"] = list(self.context_features)
        config["dense_features"] = list(self.dense_features)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "EM3Config":
        unknown = set(config) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown EM3Config fields: {sorted(unknown)}.")
        return cls(**config)

    def to_json(self) -> str:
        return json.dumps(self.get_config(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EM3Config":
        return cls.from_config(json.loads(text))

    @classmethod
    def preset(cls, name: str, **overrides) -> "EM3Config":
        """The config of a named variant (see the module docstring), with `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


# EM3's cost levers (see `em3_full_cost`): every variant with item content reads the same
# reduced tokens, so that each row of the quality table still changes one factor.
_LEAN = dict(token_dim=64, max_tokens=8, lora_scope="output")
# EM3 and its one-factor ablations with the LoRA-output history branch also share one
# Q-Former pass per item between the branches (`share_fusion`); `em3_sid`, `em3_sid_own`
# and `em3_pq` were measured before it and keep their recorded settings.
_EM3 = dict(_LEAN, share_fusion=True)

# The pooled encoders read `modality_dropout` since 2026-12-08; their presets keep the 0.0 that
# their earlier runs had, and a tuned or swept value overrides it as for any variant.
_POOLED = dict(_LEAN, history_content="full", lora_scope="all", modality_dropout=0.0)

PRESETS: Dict[str, Dict[str, Any]] = {
    "em3": dict(_EM3),
    "em3_full_cost": {},
    "id_dcn": dict(content_encoder="none", history_content="none", cic_weight=0.0,
                   use_id_sequence=False),
    "id_din": dict(content_encoder="none", history_content="none", cic_weight=0.0),
    "frozen_content": dict(_POOLED, content_encoder="frozen"),
    "frozen_content_no_cic": dict(_POOLED, content_encoder="frozen", cic_weight=0.0),
    "em3_no_qformer": dict(_POOLED, content_encoder="concat_mlp"),
    "em3_no_lora": dict(_LEAN, history_content="full", lora_scope="all"),
    "em3_no_cic": dict(_EM3, cic_weight=0.0),
    "em3_no_feedback": dict(_EM3, use_feedback=False),
    "em3_cached": dict(_LEAN, history_content="cache", lora_scope="all"),
    "em3_sid": dict(_LEAN, semantic_id_levels=3),
    "em3_sid_own": dict(_LEAN, semantic_id_levels=3, semantic_id_source="em3"),
    "em3_pq": dict(_LEAN, history_retrieval_k=50, content_attention="dot"),
    "sid_dcn": dict(content_encoder="none", history_content="none", cic_weight=0.0,
                    use_id_sequence=False, semantic_id_levels=3, use_item_id=False),
}


def _one_of(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
