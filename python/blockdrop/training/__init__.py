"""Training: the REINFORCE pieces (rl), one BlockDrop step (train_step), the curriculum / joint
finetuning trainer (trainer) and its resumable state (train_state, metrics), supervised training
under fixed policies (supervised, baselines), drop costs and weight averaging."""
