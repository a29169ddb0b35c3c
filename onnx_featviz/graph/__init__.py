"""Read and rewrite ModelProtos (pure): catalog, rewrite, matching, weights, construction."""
