"""The WebDataset shard contracts that curation writes and training reads."""
