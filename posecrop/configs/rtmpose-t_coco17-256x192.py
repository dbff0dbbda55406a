# RTMPose-t, top-down, COCO-17 keypoints, 256x192 input: inference-only config for posecrop's mmpose pose source.
# Model and test pipeline as in mmpose 1.3.2's
#   configs/body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_aic-coco-256x192.py (COCO val AP 0.685),
# whose metafile names the weights below (`load_from`, mmengine's key for "load these weights").
# Differences: the backbone is mmpose's own CSPNeXt (identical to mmdet's, same state-dict keys) and carries no
# ImageNet-pretrained init_cfg (the checkpoint provides every weight); training settings are left out.
default_scope = 'mmpose'

load_from = ('https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/'
             'rtmpose-tiny_simcc-aic-coco_pt-aic-coco_420e-256x192-cfc8f33d_20230126.pth')

codec = dict(
    type='SimCCLabel',
    input_size=(192, 256),
    sigma=(4.9, 5.66),
    simcc_split_ratio=2.0,
    normalize=False,
    use_dark=False)

model = dict(
    type='TopdownPoseEstimator',
    data_preprocessor=dict(
        type='PoseDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(
        type='CSPNeXt',
        arch='P5',
        expand_ratio=0.5,
        deepen_factor=0.167,
        widen_factor=0.375,
        out_indices=(4, ),
        channel_attention=True,
        norm_cfg=dict(type='SyncBN'),
        act_cfg=dict(type='SiLU')),
    head=dict(
        type='RTMCCHead',
        in_channels=384,
        out_channels=17,
        input_size=codec['input_size'],
        in_featuremap_size=tuple([s // 32 for s in codec['input_size']]),
        simcc_split_ratio=codec['simcc_split_ratio'],
        final_layer_kernel_size=7,
        gau_cfg=dict(
            hidden_dims=256,
            s=128,
            expansion_factor=2,
            dropout_rate=0.,
            drop_path=0.,
            act_fn='SiLU',
            use_rel_bias=False,
            pos_enc=False),
        loss=dict(
            type='KLDiscretLoss',
            use_target_weight=True,
            beta=10.,
            label_softmax=True),
        decoder=codec),
    test_cfg=dict(flip_test=True))

test_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='PackPoseInputs')
]

test_dataloader = dict(
    batch_size=32,
    dataset=dict(
        type='CocoDataset',
        data_mode='topdown',
        metainfo=dict(from_file='configs/_base_/datasets/coco.py'),
        test_mode=True,
        pipeline=test_pipeline))
val_dataloader = test_dataloader
