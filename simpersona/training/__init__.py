"""The training engine shared by the VQ-VAE and the fine-tune stages.

`engine.Engine`: one optimisation step (plain PyTorch, DDP or DeepSpeed) and its checkpoint files.
`checkpoints`: reading checkpoint files safely, reporting checkpoints to Ray Train and resuming from
them, and the fault injection the recovery tests use.
"""
