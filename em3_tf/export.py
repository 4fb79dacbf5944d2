"""SavedModel export of an `EM3Ranker` with serving signatures and TF Serving warm-up data.

Signatures:
  - `serving_default`: `examples` (string `[B]`, serialized tf.Example with the raw features
    of `em3_tf.features`, no label) -> `scores` (float `[B]`, click probability) and
    `in_catalog` (bool `[B]`: the model knows the item; an unknown one is scored as the
    unknown item, and the client warns, or refuses in strict mode). This is what
    TensorFlow Serving's Predict API is called with.
  - `predict_features`: the raw feature tensors (`user_id [B]`, `item_id [B]`, context
    features `[B]`, `user_prior_count [B]`, `user_prior_positives [B]`, and the aligned
    sequences `history_item_ids`, `history_labels`, `history_ratings`, `history_seconds_ago`
    `[B, L]` padded with -1) -> `scores`, `in_catalog`. Ids are int64, or strings (padding "")
    for a model trained on string ids.
  - `regress` (`inputs` -> `outputs`) and `classify` (`inputs` -> `classes`, `scores` over
    "0"/"1"): the same model with TF Serving's Regress / Classify method names. TF Serving's
    Classify / Regress APIs also take `example_list_with_context` for them.
  - `serving_context`: `example_list_with_context` (string `[B]`, each a serialized
    `tensorflow.serving.ExampleListWithContext`: the user's features once in `context`, one
    tf.Example per candidate) -> `scores` (float `[B, N]`, N the longest list of the batch;
    a shorter list's scores are followed by zeros) and `in_catalog` (bool `[B, N]`). TF Ranking's request format for Predict:
    the user's features and history travel once per request instead of once per candidate.
    As in TF Ranking, context and candidate features are disjoint: every list needs a
    context with all user-side features (a missing one is INVALID_ARGUMENT, naming it), and
    a candidate example carries `item_id` only (a user-side feature in it is refused,
    naming it). The context is parsed once per list and the user's side of the model runs
    once per list (`EM3Ranker.serve(..., user_index)`). With a TF Transform, which may
    combine user and item features, the context is instead merged into each candidate
    (a candidate's own value wins) and the merged examples go through `serving_default`.
  - `encode_items` (models with item content): `<modality>_tokens` float `[n, T, D]` and
    `<modality>_mask` bool `[n, T]` -> `target`, `history` float `[n, content_dim]`: the
    trained content encoder, for items added after training (`em3_tf.catalog_update`).

`assets.extra/` also holds `em3_config.json` and `catalog_encoding.json` (how the catalog's
token features were made, so new items are encoded the same way).

With a TF Transform output, both signatures apply its transform graph to the raw features
before the model (the graph is exported with the model). Every catalog item's content
embeddings (target and history branch) are computed at export and stored in the model
(`EM3Ranker.attach_content_table`), so serving gathers them instead of running the
Fusion-Q-Former per request; an item that never had an interaction is still scored from its
content by the exported model alone.
"""

import json
import os

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.config import EM3Config
from em3_tf.interface import (CONTEXT_INPUT, CONTEXT_SIGNATURE, ENCODE_SIGNATURE, IN_CATALOG,
                              SIGNATURE_INPUT, SIGNATURE_OUTPUT)

CONFIG_FILE = "em3_config.json"
WARMUP_FILE = "tf_serving_warmup_requests"
CATALOG_ENCODING_FILE = "catalog_encoding.json"
ELWC_MESSAGE = "tensorflow.serving.ExampleListWithContext"


def _raw_inputs(config: EM3Config):
    """`(scalar names, sequence names)` of the raw features the signatures take."""
    return (F.scalar_features(config.context_features) + F.USER_STATISTICS, F.SEQUENCES)


def _is_fixed_column(spec):
    return isinstance(spec, tf.io.FixedLenFeature) and list(spec.shape) == [1]


def serving_signatures(model, transform_output=None):
    """`{"serving_default", "predict_features"}` concrete-function builders for `model`."""
    config: EM3Config = model.config
    names, sequences = _raw_inputs(config)
    if transform_output is not None:
        model.tft_layer = transform_output.transform_features_layer()
        raw_spec = {n: s for n, s in transform_output.raw_feature_spec().items()
                    if n in names + sequences}

        def transform(raw):
            return model.tft_layer(raw)
    else:
        raw_spec = F.example_spec(config.context_features, with_label=False,
                                  string_ids=model.string_ids)

        def transform(raw):
            return raw

    def scored(raw):
        return {SIGNATURE_OUTPUT: model.serve(transform(raw)),
                IN_CATALOG: model.in_catalog(tf.reshape(raw[F.ITEM_ID], [-1]))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SIGNATURE_INPUT)])
    def serve_examples(examples):
        return scored(tf.io.parse_example(examples, raw_spec))

    specs = [tf.TensorSpec([None], raw_spec[n].dtype, name=n) for n in names]
    specs += [tf.TensorSpec([None, None], raw_spec[n].dtype, name=n) for n in sequences]

    @tf.function(input_signature=specs)
    def serve_features(*tensors):
        raw = {n: t[:, None] if _is_fixed_column(raw_spec[n]) else t
               for n, t in zip(names, tensors)}
        for n, t in zip(sequences, tensors[len(names):]):
            pad = F.PAD_STRING if t.dtype == tf.string else F.PAD_ID
            ragged = tf.RaggedTensor.from_tensor(t, padding=pad)
            raw[n] = (ragged.to_sparse() if isinstance(raw_spec[n], tf.io.VarLenFeature)
                      else ragged)
        return scored(raw)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(inputs):
        return {"outputs": serve_examples(inputs)[SIGNATURE_OUTPUT]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        p = serve_examples(inputs)[SIGNATURE_OUTPUT]
        classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(p)[0], 1])
        return {"classes": classes, "scores": tf.stack([1.0 - p, p], axis=1)}

    user_spec = {n: v for n, v in raw_spec.items() if n != F.ITEM_ID}
    item_spec = {F.ITEM_ID: raw_spec[F.ITEM_ID],
                 **{n: tf.io.RaggedFeature(v.dtype) for n, v in user_spec.items()}}

    def score_lists(context, examples, valid, index):
        """`scored` outputs (`[N]` each) of the valid candidates of each list against its
        context."""
        if transform_output is not None:
            # A Transform may combine user and item features, so it sees whole examples.
            # Serialized protos concatenate as a merge: each candidate's features over the
            # context's (a candidate's own value wins), as TF Serving merges them.
            merged = tf.boolean_mask(
                tf.strings.join([tf.broadcast_to(context[:, None], tf.shape(examples)),
                                 examples]), valid)
            return serve_examples(merged)
        # TF Ranking's convention: user features from the context, item_id from each
        # candidate; the user's part of the model runs once per list.
        user = tf.io.parse_example(context, user_spec)
        items = tf.io.parse_example(tf.boolean_mask(examples, valid), item_spec)
        checks = [tf.debugging.assert_equal(
            tf.size(items[n].flat_values), 0,
            message=f"{CONTEXT_SIGNATURE}: candidate examples carry {F.ITEM_ID} only; "
                    f"feature {n} belongs in the context") for n in user_spec]
        with tf.control_dependencies(checks):
            user_index = tf.identity(index[:, 0])
        return {SIGNATURE_OUTPUT: model.serve({**user, F.ITEM_ID: items[F.ITEM_ID]}, user_index),
                IN_CATALOG: model.in_catalog(items[F.ITEM_ID])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CONTEXT_INPUT)])
    def serve_with_context(example_list_with_context):
        sizes, (examples, context) = tf.io.decode_proto(
            example_list_with_context, ELWC_MESSAGE, ["examples", "context"],
            [tf.string, tf.string], descriptor_source=_elwc_descriptor_source())
        context = tf.pad(context, [[0, 0], [0, 1]])[:, 0]  # "" where a list has none
        valid = tf.range(tf.shape(examples)[1])[None, :] < sizes[:, :1]
        index = tf.where(valid)  # [N, 2]: (list, position) of each candidate
        outputs = score_lists(context, examples, valid, index)
        shape = tf.shape(examples, out_type=tf.int64)
        return {SIGNATURE_OUTPUT: tf.scatter_nd(index, outputs[SIGNATURE_OUTPUT], shape),
                IN_CATALOG: tf.scatter_nd(index, tf.cast(outputs[IN_CATALOG], tf.int32),
                                          shape) > 0}

    signatures = {"serving_default": serve_examples, "predict_features": serve_features,
                  "regress": regress, "classify": classify, CONTEXT_SIGNATURE: serve_with_context}
    if model.content is not None:
        signatures[ENCODE_SIGNATURE] = encode_items_signature(model)
    return signatures


def encode_items_signature(model):
    """`encode_items`: token features of new items -> their content embeddings (what
    `em3_tf.catalog_update` appends to the exported content table)."""
    shapes = model.content.token_shapes
    specs = []
    for name, (length, dim) in shapes.items():
        specs += [tf.TensorSpec([None, length, dim], tf.float32, name=f"{name}_tokens"),
                  tf.TensorSpec([None, length], tf.bool, name=f"{name}_mask")]

    @tf.function(input_signature=specs)
    def encode_items(*tensors):
        names = list(shapes)
        return model.encode_items(dict(zip(names, tensors[0::2])),
                                  dict(zip(names, tensors[1::2])))

    return encode_items


def _elwc_descriptor_source() -> bytes:
    """`bytes://` + a FileDescriptorSet with TF Serving's `input.proto` and its dependencies,
    so `tf.io.decode_proto` can read `ExampleListWithContext` inside the graph."""
    from google.protobuf import descriptor_pb2
    from tensorflow_serving.apis import input_pb2

    files, seen = descriptor_pb2.FileDescriptorSet(), set()

    def add(descriptor):
        if descriptor.name not in seen:
            seen.add(descriptor.name)
            for dependency in descriptor.dependencies:
                add(dependency)
            descriptor.CopyToProto(files.file.add())

    add(input_pb2.DESCRIPTOR)
    return b"bytes://" + files.SerializeToString()


def set_method_names(export_dir):
    """Gives `regress` / `classify` TF Serving's method names (TF 2 saves every signature as
    predict), so TF Serving's Regress and Classify APIs accept them."""
    from tensorflow.core.protobuf import saved_model_pb2
    path = os.path.join(export_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    signatures["regress"].method_name = tf.saved_model.REGRESS_METHOD_NAME
    signatures["classify"].method_name = tf.saved_model.CLASSIFY_METHOD_NAME
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(proto.SerializeToString())


def write_warmup_requests(export_dir: str, serialized_examples, model_name: str):
    """`assets.extra/tf_serving_warmup_requests`: Predict requests TF Serving replays on load,
    one per request format (`serving_default`, `serving_context`)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from tensorflow_serving.apis import input_pb2

    serialized_examples = list(serialized_examples)
    flat = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
    flat.inputs[SIGNATURE_INPUT].CopyFrom(
        tf.make_tensor_proto(serialized_examples, dtype=tf.string))
    listed = input_pb2.ExampleListWithContext()
    listed.context.ParseFromString(serialized_examples[0])
    for example in serialized_examples:
        listed.examples.add().ParseFromString(example)
    with_context = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=CONTEXT_SIGNATURE))
    with_context.inputs[CONTEXT_INPUT].CopyFrom(
        tf.make_tensor_proto([listed.SerializeToString()], dtype=tf.string))
    path = os.path.join(export_dir, "assets.extra", WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for request in (flat, with_context):
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def export_saved_model(model, export_dir: str, transform_output=None, warmup_examples=None,
                       model_name="em3", content_table=True) -> str:
    """Writes a SavedModel to `export_dir` (must not exist) and returns it.

    It is written to a temporary sibling directory first and renamed into place, so a reader
    never sees a half-written export. `warmup_examples` (serialized tf.Examples) become TF
    Serving warm-up requests. With `content_table`, every catalog item's content embeddings
    (both branches) are computed now and stored in the model, and the signatures read them
    instead of running the content encoder on every request.
    """
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"Export directory {export_dir} already exists.")
    model.sync_content_cache()
    if content_table:
        model.attach_content_table()
    else:
        model.content_table = None  # the signatures run the live encoder
    tmp = export_dir.rstrip("/") + ".tmp-export"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(model, tmp, signatures=serving_signatures(model, transform_output))
    set_method_names(tmp)
    extra = os.path.join(tmp, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, CONFIG_FILE), "w") as f:
        f.write(json.dumps(model.config.get_config(), indent=2, sort_keys=True))
    if model.content is not None:
        with tf.io.gfile.GFile(os.path.join(extra, CATALOG_ENCODING_FILE), "w") as f:
            f.write(json.dumps(model.content.catalog_encoding, indent=2, sort_keys=True))
    if warmup_examples is not None:
        write_warmup_requests(tmp, warmup_examples, model_name)
    tf.io.gfile.rename(tmp, export_dir)
    return export_dir


def load_config(export_dir: str) -> EM3Config:
    with tf.io.gfile.GFile(os.path.join(export_dir, "assets.extra", CONFIG_FILE)) as f:
        return EM3Config.from_config(json.load(f))
