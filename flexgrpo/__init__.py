"""flexgrpo: the contracts every role shares: the config schema, the records passed between roles, the Redis
control-plane client and the weight transport. Nothing here imports the roles (actors, learner, reward_workers,
cluster) or the orchestration above them; importing the config or the control plane loads neither torch nor ray."""
