"""gRPC client of an EM3 model served by TensorFlow Serving (or `serving.local_server`).

Library:
    client = EM3Client("localhost:8500", model_name="em3")
    ranked = client.rank({"user_id": 7, "user_age_bucket": 2, "user_gender": 1,
                          "user_occupation": 4,
                          "history_item_ids": [50, 181],        # most recent first
                          "history_labels": [1, 0],             # what the user thought of them
                          "history_ratings": [5, 2],            # 0 where there is no rating
                          "history_seconds_ago": [3600, 86400]},
                         candidates=[1, 2, 3])
    client.metadata(); client.status()

CLI:
    python -m serving.client --target localhost:8500 rank --user-id 7 \\
        --history 50:1:5:3600,181:0:2:86400 \\
        --context user_age_bucket=2 --context user_gender=1 --candidates 1,2,3
    python -m serving.client --target localhost:8500 metadata
    python -m serving.client --target localhost:8500 status

One Predict call per `rank` on the official `tensorflow_serving.apis` stubs: by default an
`ExampleListWithContext` (the user's features once, one small tf.Example per candidate) to the
`serving_context` signature; `request_format="flat"` sends one full tf.Example per candidate
to `serving_default`. Retries UNAVAILABLE with jittered exponential backoff, all within one
overall deadline per call.
"""

import argparse
import json
import random
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np

from em3_tf import interface as F
from em3_tf import protos
from em3_tf.interface import CONTEXT_INPUT, CONTEXT_SIGNATURE, SIGNATURE_INPUT, SIGNATURE_OUTPUT

_P = protos.load()  # the official TF Serving protos, without importing TensorFlow

REQUEST_FORMATS = ("context", "flat")


class ServingClientError(RuntimeError):
    """A failed call; `code` is the gRPC status code, the message the server's."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code


class EM3Client:
    """Scores one user against candidate items through the TF Serving gRPC API.

    Args:
      target: `host:port` of the model server.
      model_name: served model name.
      version, version_label: pin a version or a label (`stable`, `canary`); default newest.
      signature_name: the serialized-tf.Example signature (flat requests).
      request_format: how `rank` sends a request: `"context"` (one `ExampleListWithContext`:
        the user's features once, one small tf.Example per candidate, to the
        `serving_context` signature) or `"flat"` (one full tf.Example per candidate, to
        `signature_name`).
      timeout_s: overall deadline of each call, retries included.
      retries: extra attempts on UNAVAILABLE, after jittered `backoff_s * 2**attempt` sleeps.
    """

    def __init__(self, target="localhost:8500", model_name="em3", version: Optional[int] = None,
                 version_label: Optional[str] = None, signature_name="serving_default",
                 timeout_s=5.0, retries=3, backoff_s=0.1, request_format="context"):
        if version is not None and version_label:
            raise ValueError("Give at most one of `version` and `version_label`.")
        if request_format not in REQUEST_FORMATS:
            raise ValueError(f"`request_format` must be one of {REQUEST_FORMATS}, got "
                             f"{request_format!r}.")
        self.request_format = request_format
        self._jitter = random.Random()
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("`timeout_s` must be > 0, `retries` and `backoff_s` >= 0.")
        self.target, self.model_name = target, model_name
        self.version, self.version_label = version, version_label
        self.signature_name = signature_name
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20),
                             ("grpc.max_send_message_length", 64 << 20)])
        self.predictions = _P.prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = _P.model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, signature_name=None):
        spec = _P.model_pb2.ModelSpec(name=self.model_name,
                                   signature_name=signature_name or "")
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label
        return spec

    def _call(self, method, request):
        """One call within one overall deadline of `timeout_s`: UNAVAILABLE is retried up to
        `retries` times after a jittered exponential backoff (uniform in
        `[backoff_s * 2**attempt / 2, backoff_s * 2**attempt]`), while time is left."""
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 1e-3))
            except grpc.RpcError as error:
                code = error.code()
                pause = self.backoff_s * 2 ** attempt * self._jitter.uniform(0.5, 1.0)
                if (code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries
                        and time.monotonic() + pause < deadline):
                    time.sleep(pause)
                    continue
                raise ServingClientError(code, error.details() or "") from None
        raise AssertionError("unreachable")

    def predict_examples(self, serialized: Sequence[bytes]) -> Tuple[np.ndarray, int]:
        """Scores serialized tf.Examples; returns `(scores [n], served version)`."""
        request = _P.predict_pb2.PredictRequest(model_spec=self._spec(self.signature_name))
        request.inputs[SIGNATURE_INPUT].CopyFrom(protos.tensor_proto(list(serialized)))
        response = self._call(self.predictions.Predict, request)
        return (protos.to_ndarray(response.outputs[SIGNATURE_OUTPUT]).reshape(-1),
                response.model_spec.version.value)

    def predict_with_context(self, context: bytes, candidates: Sequence[bytes]
                             ) -> Tuple[np.ndarray, int]:
        """Scores serialized candidate tf.Examples merged over one serialized context
        tf.Example (`serving_context` signature); returns `(scores [n], served version)`."""
        listed = _P.input_pb2.ExampleListWithContext()
        listed.context.ParseFromString(context)
        for candidate in candidates:
            listed.examples.add().ParseFromString(candidate)
        request = _P.predict_pb2.PredictRequest(model_spec=self._spec(CONTEXT_SIGNATURE))
        request.inputs[CONTEXT_INPUT].CopyFrom(protos.tensor_proto([listed.SerializeToString()]))
        response = self._call(self.predictions.Predict, request)
        scores = protos.to_ndarray(response.outputs[SIGNATURE_OUTPUT]).reshape(-1)
        scores = scores[:len(candidates)]
        return scores, response.model_spec.version.value

    def rank(self, user: Dict, candidates: Sequence[int]) -> List[Tuple[int, float]]:
        """`[(item_id, score)]` of `candidates` for `user`, best first.

        `user` holds `user_id`, the model's context features and the user's history with its
        feedback: the aligned lists `history_item_ids` (most recent first), `history_labels`,
        `history_ratings` and `history_seconds_ago` (seconds before now). The running
        statistics `user_prior_count` / `user_prior_positives` default to those of the given
        history; pass them when the history is cut. One Predict call, in `request_format`.
        """
        if not len(candidates):
            raise ValueError("`candidates` is empty.")
        if self.request_format == "flat":
            scores, _ = self.predict_examples(F.to_examples(user_rows(user, candidates)))
        else:
            context, items = context_request(user, candidates)
            scores, _ = self.predict_with_context(context, items)
        order = np.argsort(-scores, kind="stable")
        return [(int(candidates[i]), float(scores[i])) for i in order]

    def metadata(self) -> Dict:
        """`{signature: {"inputs": {...}, "outputs": {...}, "method": ...}}` of the model."""
        request = _P.get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._spec(), metadata_field=["signature_def"])
        response = self._call(self.predictions.GetModelMetadata, request)
        signatures = _P.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {"version": response.model_spec.version.value, "signatures": {
            key: {"method": d.method_name,
                  "inputs": {k: _dtype_name(v.dtype) for k, v in d.inputs.items()},
                  "outputs": {k: _dtype_name(v.dtype) for k, v in d.outputs.items()}}
            for key, d in signatures.signature_def.items()
            if not key.startswith("__")}}  # skips TF's internal __saved_model_init_op

    def status(self) -> List[Dict]:
        """`[{"version", "state", "error"}]` of the model's versions."""
        request = _P.get_model_status_pb2.GetModelStatusRequest(model_spec=self._spec())
        response = self._call(self.models.GetModelStatus, request)
        return [{"version": s.version,
                 "state": _P.get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                 "error": s.status.error_message}
                for s in response.model_version_status]


def _dtype_name(dtype: int) -> str:
    """TensorFlow's name of a `DataType` enum value: `DT_FLOAT` -> "float32"."""
    name = _P.types_pb2.DataType.Name(dtype)[3:].lower()
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


def user_rows(user: Dict, candidates: Sequence[int]) -> Dict[str, np.ndarray]:
    """The per-candidate feature rows of `EM3Client.rank`'s `user` (see there)."""
    if F.USER_ID not in user:
        raise ValueError(f"`user` needs '{F.USER_ID}'.")
    history = {name: np.asarray(list(user.get(name, [])), np.int64) for name in F.SEQUENCES}
    for name in F.FEEDBACK_SEQUENCES:
        if len(history[name]) != len(history[F.HISTORY]):
            raise ValueError(f"`user['{name}']` has {len(history[name])} entries; it must have "
                             f"one per history item ({len(history[F.HISTORY])}).")
    stats = {F.USER_COUNT: len(history[F.HISTORY]),
             F.USER_POSITIVES: int((history[F.HISTORY_LABELS] > 0).sum())}
    n = len(candidates)
    rows = {name: np.full(n, int(value), np.int64)
            for name, value in {**stats, **user}.items() if name not in F.SEQUENCES}
    rows[F.ITEM_ID] = np.asarray(candidates, np.int64)
    rows.update({name: np.repeat(value.reshape(1, -1), n, axis=0)
                 for name, value in history.items()})
    return rows


def context_request(user: Dict, candidates: Sequence[int]) -> Tuple[bytes, List[bytes]]:
    """`(context, candidates)` serialized tf.Examples of `EM3Client.rank`'s context format:
    the user's features once, and one `item_id`-only tf.Example per candidate."""
    rows = user_rows(user, candidates[:1])
    rows.pop(F.ITEM_ID)
    context = F.to_examples(rows)[0]
    return context, [F.example({F.ITEM_ID: [c]}) for c in candidates]


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _history(text):
    """`item:label:rating:seconds_ago,...` -> the four aligned history lists."""
    entries = [e.split(":") for e in text.split(",") if e.strip()]
    if any(len(e) != 4 for e in entries):
        raise argparse.ArgumentTypeError(
            "each history entry must be ITEM:LABEL:RATING:SECONDS_AGO, e.g. 50:1:5:3600")
    return {name: [int(e[k]) for e in entries] for k, name in enumerate(F.SEQUENCES)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:8500")
    p.add_argument("--model-name", default="em3")
    p.add_argument("--version", type=int)
    p.add_argument("--version-label")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--request-format", choices=REQUEST_FORMATS, default="context",
                   help="rank: ExampleListWithContext (default) or one tf.Example per candidate")
    sub = p.add_subparsers(dest="command", required=True)
    rank = sub.add_parser("rank", help="score one user against candidate items")
    rank.add_argument("--user-id", type=int, required=True)
    rank.add_argument("--history", type=_history, default={},
                      help="ITEM:LABEL:RATING:SECONDS_AGO entries, most recent first (rating "
                           "0: none)")
    rank.add_argument("--candidates", type=_ints, required=True)
    rank.add_argument("--context", action="append", default=[], metavar="NAME=INT")
    sub.add_parser("metadata", help="GetModelMetadata")
    sub.add_parser("status", help="GetModelStatus")
    args = p.parse_args(argv)
    with EM3Client(args.target, args.model_name, args.version, args.version_label,
                   timeout_s=args.timeout, request_format=args.request_format) as client:
        try:
            if args.command == "rank":
                user = {F.USER_ID: args.user_id, **args.history}
                user.update({k: int(v) for k, v in (c.split("=", 1) for c in args.context)})
                result = client.rank(user, args.candidates)
            else:
                result = client.metadata() if args.command == "metadata" else client.status()
        except ServingClientError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
