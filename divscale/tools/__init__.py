"""Tools beside the paper's main line: augmentation and selection (augment, select), the annotation-budget planner
(annotation_plan), the compute plan of a recipe (gpu_plan) and the GPU rehearsal (gpu_check)."""
