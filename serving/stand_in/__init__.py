"""The parts of the local TF Serving stand-in (`serving.local_server`), one concept a module:

  - `status`: `ServingError` (a gRPC status code and message) and its HTTP mapping;
  - `batching`: the batch scheduler (size limits, bounded queue, deadlines);
  - `servable`: one loaded version (SavedModel, signatures, warm-up, release);
  - `inference`: Predict / Classify / Regress / MultiInference / metadata on a servable;
  - `versions`: version directories and the availability-preserving version manager;
  - `metrics`: request counters and latency histograms in Prometheus' text format;
  - `rest`: TF Serving's REST API and the metrics endpoint.
"""
