"""Write a TF Serving models.config for EM3, optionally with `stable` / `canary` labels.

    python -m serving.write_models_config --base-path artifacts/serving/em3 > models.config
    python -m serving.write_models_config --base-path /models/em3 --stable 1732170000 \\
        --canary 1732180000 --output serving/models.config

With labels the policy serves exactly the labelled versions (TF Serving only labels loaded
versions); without, the newest `--keep` versions.
"""

import argparse
import os
import sys

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


def models_config(base_path, name="em3", keep=2, stable=None, canary=None):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path,
                                                model_platform="tensorflow")
    labels = {k: v for k, v in (("stable", stable), ("canary", canary)) if v is not None}
    if labels:
        model.model_version_policy.specific.versions.extend(sorted(set(labels.values())))
        for label, version in labels.items():
            model.version_labels[label] = version
    else:
        model.model_version_policy.latest.num_versions = keep
    return config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-path", required=True)
    p.add_argument("--name", default="em3")
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--stable", type=int)
    p.add_argument("--canary", type=int)
    p.add_argument("--output")
    args = p.parse_args(argv)
    base = args.base_path if args.base_path.startswith("/") else os.path.abspath(args.base_path)
    text = text_format.MessageToString(
        models_config(base, args.name, args.keep, args.stable, args.canary))
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
