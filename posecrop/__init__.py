"""posecrop, stage one: ReID dataset -> pose -> canonical repair -> Eq. 1-2 regions -> five crops -> Parquet cache.

Reading order for a newcomer:
    records, datasets/        what a dataset reader yields; one module per dataset (register_dataset)
    keypoints, sources/       the COCO-18 layout; pose sources (register_pose_source) and chains of them
    plausibility, canonical   which joints to distrust; the canonical-pose repair (shape_model: its shape model;
                              canonical_fit: learning the bank)
    regions, crops            Eq. 1-2 region boxes; cutting, filling and encoding the crops
    crop_stage                the run: CropConfig, run_crop (crop_worker: a worker's batch; crop_pool: the processes)
    schema, cache_reader      the cache's schema and its reader - with regions, crops, keypoints and records the
                              contract with stage two (reidtrain imports nothing else of posecrop)
    cache                     the cache writer (atomic parts, resume, shards, locks, the run report)
    synth                     the built-in synthetic dataset (synth_render: drawing; synth_estimator: its keypoints)
    commands_*                the command-line commands of this stage (`synth`, `crop`, `info`, `show`, `canonical`)
Shared utilities (errors, atomic writes, typed configs) are in reidkit; the recipe runner is pipelines.runner.
"""
