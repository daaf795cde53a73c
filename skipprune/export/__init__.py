"""HOW it is removed: source shards -> planned output shards, config and remote code, verified, published
atomically."""
