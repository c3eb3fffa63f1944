"""Training recipes: one module per method (TRL-native YAML parsed into its dataclasses), PPO our own."""
