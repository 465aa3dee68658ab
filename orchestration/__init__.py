"""The room above the roles: the composition root, the pipeline of groups in flight, operator commands,
checkpoints and recovery, reporting, the driver and the CLI. It may import every other room."""
