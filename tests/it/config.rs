//! Fleet files: the example validates; broken files report every error at its line:column.

use fleet::config;

#[test]
fn the_example_fleet_file_is_valid() {
    let text = std::fs::read_to_string("fleet.toml.example").unwrap();
    match config::load_str("fleet.toml.example", &text) {
        Ok(fleet) => println!("{} machines", fleet.machines.len()),
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}
