"""Data of stage two and the foundation's data tools.

- `synthetic`: the generated RGB-D dataset (`make-synthetic`); `splits`: label splits (`make-splits`);
  `cityscapes`: gtFine -> COCO (`convert-cityscapes`); `coco`: checked COCO / image-list loading.
- `sample`: the `Sample` type; `resample` + `transforms`: geometric transforms over every spatial
  field; `photometric`: the strong view; `dataset`: datasets reading the depth cache; `collate`: `Batch`.
"""
