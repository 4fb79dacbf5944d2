"""TFX user code of EM3: Transform's `preprocessing_fn` and Trainer's `run_fn`."""
