"""reidtrain, stage two: the five-branch attention network trained and evaluated on a posecrop crop cache.

It reads the cache through posecrop's contract only (posecrop.schema, cache_reader, crops, regions, keypoints,
records; checked by tests/test_layout.py): model/ (the networks), data (loading a split, the input crops),
augment, train (the training loop, checkpoint: resumable checkpoints), evaluate (CMC / mAP; metrics, rerank),
export (ONNX, features), reports (pictures, summaries, results tables), commands_* (the command-line commands
`train`, `evaluate`, `extract`, `export`, `model-info`). Shared utilities are in reidkit; recipes that chain both
stages are pipelines.runner.
"""
