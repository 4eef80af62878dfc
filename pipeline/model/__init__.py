"""The segmenter shared by teacher and student: Mask2Former with optional Depth Fusion.

One paper component per file: `backbone` (timm, res2..res5), `depth_fusion` (DF), `ms_deform_attn`
and `pixel_decoder` (deformable pixel decoder), `transformer_decoder` (masked attention),
`matcher` + `criterion` (+ `point_sampling`) for the losses, `postprocess` for inference,
`mask_former` (the glue) and `build` (the one place that reads `ModelConfig`).
"""
