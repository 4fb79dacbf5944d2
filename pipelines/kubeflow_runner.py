"""Compile the EM3 pipeline to a Kubeflow Pipelines v2 / Vertex AI Pipelines JSON spec.

    python -m pipelines.kubeflow_runner --image REGISTRY/em3-tf:TAG \\
        --pipeline-root gs://BUCKET/em3 --data-dir gs://BUCKET/ml-100k --output em3.json

The image must contain this project installed with ./setup.sh (TFX 1.16 and em3_tf); submit
the JSON with the KFP or Vertex AI client. Beam-based components take --beam-arg values (e.g.
`--beam-arg=--runner=DataflowRunner --beam-arg=--project=P --beam-arg=--region=R`).
"""

import argparse
import sys

from pipelines.config import PipelineConfig


def parse_args(argv=None):
    d = PipelineConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.kubeflow_runner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="container image with em3-tf installed")
    p.add_argument("--pipeline-root", required=True, help="artifact root (e.g. gs://...)")
    p.add_argument("--data-dir", required=True, help="output of `python -m em3_tf.data.build`")
    p.add_argument("--serving-dir", required=True, help="Pusher base directory (e.g. gs://...)")
    p.add_argument("--auc-floor", type=float, default=None,
                   help="default: the popularity baseline recorded in <data-dir>/summary.json")
    p.add_argument("--catalog-hash", default="",
                   help="default: the hash of <data-dir>/catalog's files")
    p.add_argument("--hyperparameters-uri", default="",
                   help="directory with best_hyperparameters.txt to import")
    p.add_argument("--output", default="em3_pipeline.json")
    p.add_argument("--pipeline-name", default=None,
                   help="default: derived from the data set (PipelineConfig.for_data)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--preset", default=d.preset)
    p.add_argument("--beam-arg", action="append", default=[])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline

    config = PipelineConfig.for_data(args.data_dir, pipeline_name=args.pipeline_name,
                                     serving_dir=args.serving_dir, epochs=args.epochs,
                                     preset=args.preset, auc_floor=args.auc_floor,
                                     catalog_hash=args.catalog_hash,
                                     hyperparameters_uri=args.hyperparameters_uri,
                                     hyperparameters_dir="",
                                     beam_args=tuple(args.beam_arg) or None)
    pipeline = create_pipeline(config)
    pipeline.pipeline_info.pipeline_root = args.pipeline_root
    pipeline.metadata_connection_config = None  # Kubeflow provides ML Metadata
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=args.image),
        output_filename=args.output)
    runner.run(pipeline)
    print(f"wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
