"""Ask the pushed model for a ranking over gRPC: the last step of the README's main command.

    python -m serving.demo                          # starts the local stand-in server
    python -m serving.demo --target localhost:8500  # an already running TF Serving

Takes a user from the test split, candidate items the model saw in training and items held
out of training (catalog content only), sends one Predict request and prints the ranking.
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow: no C++ log noise
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402

from em3_tf import features as F  # noqa: E402
from em3_tf.data import records  # noqa: E402
from serving.client import EM3Client  # noqa: E402


def pick_request(data_dir, protocol="item_cold", seed=0, per_kind=5, min_history=10):
    """A test user with at least `min_history` history entries (`None`: a full history, the
    data's longest), with context, and warm + cold candidates."""
    context = records.read_metadata(data_dir, protocol)["context_features"]
    test = records.read_split(data_dir, protocol, "test")
    rng = np.random.default_rng(seed)
    padded = test[F.HISTORY] == F.padding_of(test[F.HISTORY])
    lengths = (~padded).sum(1)
    rows = np.flatnonzero(lengths >= (lengths.max() if min_history is None else min_history))
    row = int(rng.choice(rows))
    valid = ~padded[row]
    user = {F.USER_ID: test[F.USER_ID][row].item()}  # ids: int or str, as the data has them
    user.update({name: test[name][row][valid].tolist() for name in F.SEQUENCES})
    user.update({name: test[name][row].item() for name in context + list(F.USER_STATISTICS)})
    cold = np.unique(test[F.ITEM_ID][test["is_cold_item"] == 1])
    warm = np.unique(test[F.ITEM_ID][test["is_cold_item"] == 0])
    candidates = {i.item(): "cold" for i in rng.choice(cold, per_kind, replace=False)}
    candidates.update({i.item(): "warm" for i in rng.choice(warm, per_kind, replace=False)})
    return user, candidates


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m serving.demo", description=__doc__)
    p.add_argument("--data-dir", default="artifacts/ml-100k")
    p.add_argument("--serving-dir", default="artifacts/serving")
    p.add_argument("--model-name", default="em3")
    p.add_argument("--target", help="a running server; default: start the local stand-in")
    args = p.parse_args(argv)
    server = None
    target = args.target
    if target is None:
        from serving.local_server import serve, single_model_config
        base = os.path.join(args.serving_dir, args.model_name)
        if not os.path.isdir(base) or not os.listdir(base):
            print(f"No pushed model under {base}: run `python -m pipelines.local_runner` "
                  f"first (a model is pushed only when it is blessed).", file=sys.stderr)
            return 1
        server = serve(single_model_config(args.model_name, base), port=0)
        target = f"127.0.0.1:{server.port}"
        print(f"local model server (TF Serving API) on {target} serving {base}", flush=True)
    try:
        user, candidates = pick_request(args.data_dir)
        with EM3Client(target, args.model_name, timeout_s=30) as client:
            status = client.status()
            ranked = client.rank(user, list(candidates))
        print(f"model status: {status}")
        print(f"user {user[F.USER_ID]}, {len(user[F.HISTORY])} history items; "
              f"{len(candidates)} candidates in one Predict request:")
        for item, score in ranked:
            print(f"  item {str(item):>9s}  {candidates[item]:4s}  score {score:.4f}")
    finally:
        if server is not None:
            server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
