//! Benchmark: lands in the next commit.
fn main() {}
